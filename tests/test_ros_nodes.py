"""encoder_node and llm_node as their console scripts, in their own processes over real DDS,
fed by `streamvlm play` from the sample bag; this test process is the user asking."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE_BAG

pytestmark = pytest.mark.ros
pytest.importorskip("rclpy", reason="rclpy is not installed (make setup)")
pytest.importorskip("streamvlm_msgs.srv", reason="streamvlm_msgs is not built (make setup)")

from ros_probe import Probe, publish_until, start_node, stop_node, wait_for  # noqa: E402  (needs rclpy)

TOPIC = "/camera/image/compressed"
BAG_START_S = 1_700_000_000  # the sample bag's first stamp
NODE_ARGS = [
    "--ros-args", "--params-file", str(ROOT / "config" / "live.yaml"),
    "-p", "model.name:=tiny", "-p", "compressed:=true", "-p", "vision.fps:=4.0",
    "-p", "language.caption_interval_s:=2.0", "-p", "language.caption_max_new_tokens:=4",
    "-p", "language.max_new_tokens:=6", "-p", "language.max_question_chars:=200",
    "-p", "language.cache.vision_window_s:=5.0",  # so the 20 s bag sends frames to long-term memory
    "-r", f"image/compressed:={TOPIC}",
]
LLM, ENCODER = "streamvlm: /llm_node", "streamvlm: /encoder_node"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def nodes(tiny_model, tmp_path_factory):
    """Both nodes running (the tiny model is built before they start, so they share it)."""
    logs = tmp_path_factory.mktemp("node-logs")
    processes = [start_node("llm_node", NODE_ARGS, logs), start_node("encoder_node", NODE_ARGS, logs)]
    probe = Probe()
    try:
        wait_for(lambda: probe.levels.get(LLM) and probe.levels.get(ENCODER), 90, "diagnostics from both nodes")
        yield probe, logs
    finally:
        probe.close()
        codes = [stop_node(p) for p in processes]
        logs_text = "\n".join(f.read_text() for f in sorted(logs.glob("*.log")))
        assert codes == [0, 0], f"nodes exited with {codes}:\n{logs_text}"


def test_a_question_before_any_frame_gets_a_clear_refusal(nodes):
    probe, _ = nodes
    response = probe.ask("What is happening?")
    assert not response.success and "no camera frames" in response.error


def test_empty_and_overlong_questions_are_refused_with_reasons(nodes):
    probe, _ = nodes
    empty, overlong = probe.ask(""), probe.ask("why? " * 100)
    assert not empty.success and "empty" in empty.error
    assert not overlong.success and "limit is 200" in overlong.error


def test_malformed_compressed_images_are_counted_drops(nodes):
    from sensor_msgs.msg import CompressedImage

    probe, _ = nodes
    publisher = probe.publisher(CompressedImage, TOPIC)
    wait_for(lambda: publisher.get_subscription_count() > 0, 30, "the encoder's subscription")
    garbage = [b"\xff\xd8\xff\xe0 this is not a JPEG", b""]
    sent = 0

    def message(data: bytes) -> CompressedImage:
        nonlocal sent
        sent += 1
        msg = CompressedImage(format="jpeg", data=data)
        msg.header.stamp.sec = BAG_START_S - 100 + sent  # whole seconds apart: each is sampled
        return msg

    def dropped() -> float:
        return probe.figure("encoder_node", "frames dropped (invalid)")

    wait_for(lambda: dropped() == 0, 30, "diagnostics from the encoder")
    for i, data in enumerate(garbage, start=1):
        before = dropped()
        publish_until(publisher, lambda _: message(data), lambda: dropped() > before, 60,
                      f"the encoder to count malformed image {i}", period_s=3.0)
    # An image is sent again when it is not counted within 3 s: the copy before was lost on
    # the way (best effort). Each one that arrived is counted, and none got through.
    assert 2 <= dropped() <= sent
    assert probe.figure("encoder_node", "frames processed") == 0


def test_the_sample_bag_streams_in_and_every_question_is_answered(nodes):
    from sensor_msgs.msg import Image

    probe, _ = nodes
    # The debug picture, turned on at run time, comes at the processing rate while watched.
    pictures = []
    probe.node.create_subscription(Image, "debug_image", pictures.append, 10)
    assert all(r.successful for r in probe.set_parameters("encoder_node", {"debug_image": True}))
    player = subprocess.Popen([str(BIN / "streamvlm"), "play", str(SAMPLE_BAG), "--rate", "2", "--wait", "30"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: probe.figure("llm_node", "frames ingested") >= 3, 90, "frames ingested by llm_node")
        # Questions asked together while frames stream in: every one is answered.
        responses = [None] * 4
        threads = [threading.Thread(target=lambda i=i: responses.__setitem__(i, probe.ask(f"Question {i}?")))
                   for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        for response in responses:
            assert response is not None and response.success, response
            assert response.latency_ms > 0 and response.evidence
            stamps = [t.sec + t.nanosec / 1e9 for t in response.evidence]
            assert stamps == sorted(stamps) and BAG_START_S <= stamps[0] <= stamps[-1] < BAG_START_S + 21
        wait_for(lambda: probe.captions, 120, "a caption on `captions`")
        wait_for(lambda: pictures, 60, "a debug image on `debug_image`")
        out, _ = player.communicate(timeout=120)
        assert player.returncode == 0, out
        assert "published 200 messages" in out
    finally:
        if player.poll() is None:
            player.kill()
    picture = pictures[0]
    assert picture.encoding == "rgb8" and picture.step == 3 * picture.width and len(picture.data) == 3 * picture.width * picture.height
    assert max(picture.width, picture.height) <= 960 and BAG_START_S <= picture.header.stamp.sec < BAG_START_S + 21
    caption = probe.captions[0]
    assert caption.text and caption.header.stamp.sec >= caption.start.sec >= BAG_START_S
    answered = {a.question for a in probe.answers if a.success}
    assert {f"Question {i}?" for i in range(4)} <= answered  # answers are published however asked
    after = probe.ask("And after the stream ended?")  # still serving after the malformed frames
    assert after.success and len(after.evidence) >= len(responses[-1].evidence)
    # Frames that left the 5 s window come back from long-term memory, and are named as evidence.
    stamps = [t.sec + t.nanosec / 1e9 for t in after.evidence]
    assert stamps == sorted(stamps) and stamps[0] < stamps[-1] - 6
    wait_for(lambda: probe.figure("llm_node", "memory frames") > 0, 10, "frames in long-term memory")


def test_diagnostics_report_the_figures_an_operator_needs(nodes):
    probe, _ = nodes
    wait_for(lambda: probe.figure("llm_node", "questions answered") >= 5, 30, "updated llm diagnostics")
    encoder, llm = probe.diagnostics[ENCODER], probe.diagnostics[LLM]
    for key in ("frames received", "frames processed", "frames dropped (busy)", "frames dropped (invalid)",
                "ms per frame p50", "ms per frame p95", "tokens per frame", "changed token share",
                "delta-cache reuse ratio", "frames dropped (late)", "time jump policy", "stream resets"):
        assert key in encoder, key
    for key in ("frames received", "frames ingested", "frames dropped (late)", "KV tokens in use",
                "KV token budget", "memory frames", "memory MiB", "questions answered", "questions rejected",
                "mean answer latency ms", "time jump policy", "time jumps back", "time gaps", "stream resets"):
        assert key in llm, key
    assert int(encoder["frames dropped (invalid)"]) >= 2
    assert float(encoder["tokens per frame"]) > 0 and float(llm["ms per frame p95"]) > 0
    assert int(llm["questions rejected"]) >= 3 and float(llm["mean answer latency ms"]) > 0
