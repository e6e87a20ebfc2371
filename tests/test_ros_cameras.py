"""Two cameras over real DDS: the two-process layout fed by `streamvlm play` from a two-camera
bag, and the one-process `live` composition fed by this test. Answers name both cameras in
their evidence, and the KV cache stays within its budget."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

pytestmark = pytest.mark.ros
pytest.importorskip("rclpy", reason="rclpy is not installed (make setup)")
pytest.importorskip("streamvlm_msgs.srv", reason="streamvlm_msgs is not built (make setup)")

from ros_probe import Probe, Running, publish_until, rgb_image, start_node, stop_node, wait_for  # noqa: E402
from streamvlm.bag import BagWriter  # noqa: E402

S = 1_000_000_000
START_S = 1_700_000_000
BUDGET = 1024
LLM, ENCODER = "streamvlm: /llm_node", "streamvlm: /encoder_node"
BIN = Path(sys.executable).parent


def _scene(second: int, camera: int) -> np.ndarray:
    """A frame a camera sees: a square that moves differently in each camera's view."""
    frame = np.full((96, 128, 3), 40 + 60 * camera, np.uint8)
    x = (second * (9 + 7 * camera)) % 100
    frame[30:60, x:x + 24] = (220, 40, 40) if camera == 0 else (40, 220, 40)
    return frame


@pytest.fixture
def two_camera_bag(tmp_path):
    path = tmp_path / "two-cameras.mcap"
    with BagWriter(path, "mcap") as bag:
        for second in range(12):
            bag.write_compressed("/front/image/compressed", (START_S + second) * S, _scene(second, 0))
            bag.write_compressed("/left/image/compressed", (START_S + second) * S + S // 4, _scene(second, 1))
    return path


def _evidence(response) -> set[str]:
    assert len(response.evidence_cameras) == len(response.evidence)
    return set(response.evidence_cameras)


def test_two_cameras_in_two_processes_answer_with_evidence_from_both(tiny_model, two_camera_bag, tmp_path):
    args = ["--ros-args", "--params-file", str(ROOT / "config" / "live.yaml"),
            "-p", "model.name:=tiny", "-p", "compressed:=true", "-p", "vision.fps:=2.0",
            "-p", "cameras:=[front, left]", "-p", f"language.cache.budget_tokens:={BUDGET}",
            "-p", "language.cache.vision_window_frames:=3", "-p", "language.max_new_tokens:=4",
            "-p", "language.caption_interval_s:=0.0"]
    processes = [start_node("llm_node", args, tmp_path), start_node("encoder_node", args, tmp_path)]
    probe = Probe("two_camera_probe")
    player = None
    try:
        wait_for(lambda: probe.levels.get(LLM) and probe.levels.get(ENCODER), 90, "diagnostics from both nodes")
        player = subprocess.Popen([str(BIN / "streamvlm"), "play", str(two_camera_bag), "--topic",
                                   "/front/image/compressed", "--topic", "/left/image/compressed", "--wait", "30"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = player.communicate(timeout=120)
        assert player.returncode == 0 and "published 24 messages" in out, out
        wait_for(lambda: probe.figure("llm_node", "frames ingested") >= 8, 90, "frames of both cameras ingested")
        response = probe.ask("What do the two cameras show?")
        assert response.success, response.error
        assert _evidence(response) == {"front", "left"}
        assert 0 < probe.figure("llm_node", "KV tokens in use") <= BUDGET
        wait_for(lambda: probe.figure("encoder_node", "frames processed") >= 8, 10, "the encoder's figures")
    finally:
        if player is not None and player.poll() is None:
            player.kill()
        probe.close()
        codes = [stop_node(p) for p in processes]
        logs = "\n".join(f.read_text() for f in sorted(tmp_path.glob("*.log")))
    assert codes == [0, 0], f"nodes exited with {codes}:\n{logs}"
    assert "cameras front, left" in logs


def test_two_cameras_in_the_composed_layout_answer_with_evidence_from_both(request, tiny_model):
    from sensor_msgs.msg import Image

    from streamvlm.ros.live import compose

    running = Running(compose, {"model.name": "tiny", "cameras": ["front", "left"], "vision.fps": 0.0,
                                "language.caption_interval_s": 0.0, "language.max_new_tokens": 4,
                                "language.cache.budget_tokens": BUDGET})
    request.addfinalizer(running.close)
    llm, encoder = running.nodes
    assert set(encoder.workers) == {"front", "left"}
    probe = Probe("composed_probe")
    request.addfinalizer(probe.close)
    cameras = {name: probe.publisher(Image, f"{name}/image") for name in ("front", "left")}

    def image(second: int, camera: int) -> Image:
        return rgb_image(_scene(second, camera), START_S + second, camera * 1000)

    for second in range(3):
        for camera, (name, publisher) in enumerate(cameras.items()):
            ingested = llm.worker.ingested
            publish_until(publisher, lambda attempt: image(second, camera),
                          lambda: llm.worker.ingested > ingested, 60, f"{name}'s frame {second} in the context")
    response = probe.ask("What do the two cameras show?")
    assert response.success, response.error
    assert _evidence(response) == {"front", "left"}
    assert llm.worker.stage.context_tokens <= BUDGET
    status = encoder.figures()
    assert status["frames processed"] == 6 and "front: ms per frame p50" in status


def test_an_alert_rule_added_by_service_fires_on_alerts_and_bad_rules_are_refused(request, tiny_model):
    """The tiny model cannot judge a rule, so threshold 0 makes every check hold: what is
    tested is the flow (service, parameter, checks on novelty, the rising edge, the message,
    the counts), not the judgement (`bench alerts` measures that with the evaluation model)."""
    from sensor_msgs.msg import Image

    from streamvlm.ros.live import compose

    running = Running(compose, {"model.name": "tiny", "cameras": ["front", "left"], "vision.fps": 0.0,
                                "language.caption_interval_s": 0.0, "language.max_new_tokens": 4,
                                "language.alerts.interval_s": 0.0, "language.alerts.threshold": 0.0})
    request.addfinalizer(running.close)
    llm, _ = running.nodes
    probe = Probe("alerts_probe")
    request.addfinalizer(probe.close)
    received, edit = probe.alerts, probe.edit_alerts
    for bad, reason in [([""], "empty"), (["x" * 300], "limit"), ([f"rule {i}" for i in range(40)], "at most")]:
        response = edit(add=bad)
        assert not response.success and reason in response.error and list(response.rules) == []
    response = edit(add=["a red object is visible"])
    assert response.success and list(response.rules) == ["a red object is visible"]
    assert llm.cfg.language.alerts.rules == ("a red object is visible",)

    cameras = {name: probe.publisher(Image, f"{name}/image") for name in ("front", "left")}
    for second in range(3):
        for camera, (name, publisher) in enumerate(cameras.items()):
            msg = rgb_image(_scene(second, camera), START_S + second, camera * 1000)
            ingested = llm.worker.ingested
            publish_until(publisher, lambda attempt: msg, lambda: llm.worker.ingested > ingested, 60,
                          f"{name}'s frame {second} in the context")
    wait_for(lambda: received, 30, "an alert on `alerts`")
    alert = received[0]
    assert alert.rule == "a red object is visible" and alert.camera in ("front", "left")
    assert alert.evidence and len(alert.evidence_cameras) == len(alert.evidence) and alert.text
    status = llm.worker.status()
    # Every frame was new to its camera's delta cache, so each was checked; the rule held
    # from the first check on, so it fired once (a rising edge), not once a check.
    assert status["alert rules"] == 1 and status["alert checks"] == 6 and status["alerts fired"] == 1
    assert len(received) == 1
    response = edit(remove=["a red object is visible"])
    assert response.success and list(response.rules) == [] and llm.cfg.language.alerts.rules == ()
