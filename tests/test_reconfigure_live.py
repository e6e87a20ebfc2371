"""Run-time settings changes while both nodes work: encoder_node and llm_node in their own
processes over real DDS, a camera streaming, questions asked without pause, and the delta
cache, pruner, KV cache layout and long-term memory settings changed again and again
through the nodes' parameter services (as `ros2 param set` does).

Each change is validated in the parameter callback and applied on the worker thread
between frames and questions; none may raise, lose a question, or go unseen: diagnostics
must show every value taken."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import ROOT

pytestmark = pytest.mark.ros
pytest.importorskip("rclpy", reason="rclpy is not installed (make setup)")
pytest.importorskip("streamvlm_msgs.srv", reason="streamvlm_msgs is not built (make setup)")

from ros_probe import Probe, start_node, stop_node, wait_for  # noqa: E402  (needs rclpy)

TOPIC = "/reconfigure/image"
NODE_ARGS = [
    "--ros-args", "--params-file", str(ROOT / "config" / "live.yaml"),
    "-p", "model.name:=tiny", "-p", "vision.fps:=0.0", "-p", "diagnostics_period_s:=0.2",
    "-p", "language.caption_interval_s:=1.0", "-p", "language.caption_max_new_tokens:=3",
    "-p", "language.max_new_tokens:=4", "-p", "language.cache.vision_window_s:=3.0",
    "-r", f"image:={TOPIC}",
]
LLM, ENCODER = "llm_node", "encoder_node"
# Each change differs from the one before it, so each one really changes something.
ENCODER_CHANGES = [
    {"vision.delta.mode": "stc", "vision.prune.mode": "stc", "vision.prune.keep_tokens": 30},
    {"vision.delta.mode": "threshold", "vision.delta.threshold": 0.05, "vision.prune.mode": "adaptive",
     "vision.prune.novelty": 0.05},
    {"vision.delta.mode": "off", "vision.prune.mode": "off"},
    {"vision.delta.mode": "threshold", "vision.delta.threshold": 0.02, "vision.delta.drift_bound": 0.5,
     "vision.prune.mode": "adaptive", "vision.prune.novelty": 0.02},
]
LLM_CHANGES = [
    {"language.cache.vision_window_s": 2.0, "language.memory.top_k": 2, "language.memory.keep_ratio": 0.5},
    {"language.cache.vision_window_s": 4.0, "language.cache.text_window_tokens": 256,
     "language.memory.dtype": "float16"},
    {"language.memory.max_mb": 0.0},  # memory off: evicted frames are dropped
    {"language.memory.max_mb": 64.0, "language.memory.dtype": "int8", "language.cache.vision_window_s": 3.0,
     "language.memory.top_k": 4, "language.cache.text_window_tokens": 512},
]
ROUNDS = 2


def _image(index: int):
    from sensor_msgs.msg import Image

    # A still background with a square that moves: the delta cache has partial frames to do.
    frame = np.full((96, 128, 3), 90, dtype=np.uint8)
    x = (index * 7) % 100
    frame[30:60, x:x + 24] = (220, 40, 40)
    msg = Image(height=96, width=128, encoding="rgb8", step=128 * 3, data=frame.tobytes())
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_800_000_000 + index // 10, (index % 10) * 100_000_000
    return msg


def _shown(probe: Probe, node: str, values: dict) -> bool:
    shown = probe.diagnostics.get(f"streamvlm: /{node}", {})
    return all(shown.get(f"setting {name}") == str(value) for name, value in values.items())


def test_settings_change_on_the_worker_thread_while_frames_stream_and_questions_wait(tiny_model, tmp_path):
    from sensor_msgs.msg import Image

    processes = [start_node("llm_node", NODE_ARGS, tmp_path), start_node("encoder_node", NODE_ARGS, tmp_path)]
    probe = Probe("reconfigure_probe")
    stop = threading.Event()
    responses, errors, threads = [], [], []
    try:
        wait_for(lambda: probe.diagnostics.get(f"streamvlm: /{LLM}") and probe.diagnostics.get(f"streamvlm: /{ENCODER}"),
                 90, "diagnostics from both nodes")
        camera = probe.publisher(Image, TOPIC)

        def stream():
            index = 0
            while not stop.wait(0.1):  # 10 frames per second of camera time and of wall time
                camera.publish(_image(index))
                index += 1

        def ask():
            while not stop.is_set():
                try:
                    responses.append(probe.ask(f"what is at {len(responses)}?", timeout_s=120))
                except AssertionError as err:  # no response: a lost question
                    errors.append(str(err))

        threads.append(threading.Thread(target=stream, daemon=True))
        threads[0].start()
        wait_for(lambda: probe.figure(LLM, "frames ingested") > 0, 60, "the first frame in the LLM's context")
        threads.append(threading.Thread(target=ask, daemon=True))
        threads[1].start()

        applied = {ENCODER: 0.0, LLM: 0.0}
        for change in range(ROUNDS * len(ENCODER_CHANGES)):
            for node, values in ((ENCODER, ENCODER_CHANGES[change % len(ENCODER_CHANGES)]),
                                 (LLM, LLM_CHANGES[change % len(LLM_CHANGES)])):
                results = probe.set_parameters(node, values)
                assert all(r.successful for r in results), [r.reason for r in results]
                wait_for(lambda: _shown(probe, node, values)
                         and probe.figure(node, "settings changes applied") > applied[node],
                         30, f"change {change} of {node} in its diagnostics: {values}")
                applied[node] = probe.figure(node, "settings changes applied")
        answered = len(responses)
        wait_for(lambda: len(responses) > answered + 1, 120, "two more answers after the last change")
        failed = probe.figure(ENCODER, "frames failed"), probe.figure(LLM, "frames or questions failed")
    finally:
        stop.set()
        for thread in threads:
            thread.join(150)
        probe.close()
        codes = [stop_node(p) for p in processes]
        logs = "\n".join(f.read_text() for f in sorted(tmp_path.glob("*.log")))
    assert codes == [0, 0], f"nodes exited with {codes}:\n{logs}"
    assert "Traceback" not in logs, logs
    assert failed == (0.0, 0.0), logs  # no frame, question or change raised in either worker
    assert not errors, errors  # every question got a response
    refused = [r.error for r in responses if not r.success]
    assert not refused and len(responses) >= 4, refused
    assert all(applied[node] >= ROUNDS * len(ENCODER_CHANGES) for node in applied), applied
