"""The nodes inside this process (the `live` composition and single nodes): raw-image input
checks, the in-memory token hand-over, parameters, and a node whose model fails to load."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import SAMPLE_BAG

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (make setup)")
pytest.importorskip("streamvlm_msgs.srv", reason="streamvlm_msgs is not built (make setup)")

from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from ros_probe import Probe, Running, publish_until, rgb_image, wait_for  # noqa: E402
from streamvlm.bag import BagFrames  # noqa: E402
from streamvlm.image import encode_compressed  # noqa: E402
from streamvlm.ros.encoder_node import EncoderNode  # noqa: E402
from streamvlm.ros.live import compose  # noqa: E402
from streamvlm.ros.llm_node import LlmNode  # noqa: E402

S = 1_000_000_000


@pytest.fixture
def probe():
    probe = Probe()
    yield probe
    probe.close()


def _running(request, make_nodes, **overrides) -> Running:
    running = Running(make_nodes, {"model.name": "tiny", "language.caption_interval_s": 0.0,
                                   "language.max_new_tokens": 4, **overrides})
    request.addfinalizer(running.close)
    return running


def _raw(frame: np.ndarray, stamp_s: int, **fields) -> Image:
    msg = rgb_image(frame, stamp_s)
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


def test_malformed_raw_images_are_counted_drops_and_the_encoder_goes_on(request, probe, tiny_model, frames):
    running = _running(request, lambda **kw: [EncoderNode(**kw)], **{"vision.fps": 0.0})
    encoder = running.nodes[0]
    publisher = probe.publisher(Image, "image")
    wait_for(lambda: publisher.get_subscription_count() > 0, 30, "the encoder's subscription")
    frame = frames[0]
    malformed = [
        _raw(frame, 1, step=frame.shape[1] * 3 - 1),  # step shorter than a row
        _raw(frame, 2, data=frame.tobytes()[:-10]),  # data shorter than height x step
        _raw(frame, 3, encoding="jpeg-in-a-raw-image"),  # unknown encoding
        _raw(np.zeros((0, 0, 3), np.uint8), 4),  # zero size
    ]
    # A good frame first, retried until it arrives: the path is then matched both ways, and
    # every later message arrives (one at a time: the camera subscription keeps the newest).
    publish_until(publisher, lambda attempt: _raw(frame, 1 + attempt), lambda: encoder.worker.processed == 1,
                  60, "a first good image")
    for i, msg in enumerate(malformed, start=1):
        msg.header.stamp.sec += 100
        publisher.publish(msg)
        wait_for(lambda: encoder.worker.dropped_invalid == i, 30, f"malformed image {i} to be counted")
    publisher.publish(_raw(frame, 200))
    wait_for(lambda: encoder.worker.processed == 2, 60, "a good image after the bad ones")
    assert encoder.worker.failed == 0


def test_live_hands_tokens_over_in_memory_and_answers(request, probe, tiny_model):
    running = _running(request, compose, compressed=True, **{"vision.fps": 0.0})
    llm, encoder = running.nodes
    assert running.started == [True, True]
    assert not any(topic == "/vision_tokens" and "streamvlm_msgs/msg/VisionTokens" in types
                   for topic, types in llm.get_subscriber_names_and_types_by_node("llm_node", "/"))
    publisher = probe.publisher(CompressedImage, "image/compressed")
    wait_for(lambda: publisher.get_subscription_count() > 0, 30, "the encoder's subscription")
    images = [encode_compressed(frame.rgb) for _, frame in zip(range(3), BagFrames(SAMPLE_BAG))]

    def image(sec: int) -> CompressedImage:
        msg = CompressedImage(format="jpeg", data=images[sec % 3])
        msg.header.stamp.sec, msg.header.frame_id = sec, "front_camera"
        return msg

    publish_until(publisher, lambda attempt: image(100 + attempt), lambda: llm.worker.ingested, 60,
                  "a first frame at the language model")
    first = llm.worker.stage.frame_stamps[0] // S
    stamps = [first]
    for sec in range(first + 1, first + 3):
        publisher.publish(image(sec))
        stamps.append(sec)
        wait_for(lambda: llm.worker.ingested == len(stamps), 60, f"frame {sec} to reach the language model")
    response = probe.ask("What is there?")
    assert response.success and [t.sec for t in response.evidence] == stamps
    wait_for(lambda: probe.answers, 30, "the answer on `answers`")
    assert probe.answers[-1].header.frame_id == "front_camera"
    assert encoder.worker.stage.model is llm.worker.stage.model  # one copy of the weights


def test_parameters_are_validated_and_applied_while_running(request, tiny_model):
    # An integer for a double parameter, as `-p vision.fps:=2` gives, is taken as 2.0.
    running = _running(request, lambda **kw: [EncoderNode(**kw)], **{"vision.fps": 2})
    encoder = running.nodes[0]
    assert encoder.cfg.vision.fps == 2.0 and encoder.worker.stage.sampler.period_ns == S // 2

    refused = encoder.set_parameters([Parameter("vision.fps", value=-1.0)])[0]
    assert not refused.successful and "out of range" in refused.reason
    read_only = encoder.set_parameters([Parameter("model.name", value="other")])[0]
    assert not read_only.successful and "read-only" in read_only.reason
    wrong_type = encoder.set_parameters([Parameter("vision.fps", value="fast")])[0]
    assert not wrong_type.successful
    bad_choice = encoder.set_parameters([Parameter("tokens_dtype", value="int8")])[0]
    assert not bad_choice.successful and "one of float32" in bad_choice.reason
    assert encoder.cfg.vision.fps == 2.0 and encoder.settings.tokens_dtype == "float32"  # nothing changed

    applied = encoder.set_parameters([Parameter("vision.fps", value=5.0)])[0]
    assert applied.successful
    assert encoder.cfg.vision.fps == 5.0 and encoder.worker.stage.sampler.period_ns == S // 5
    descriptor = encoder.describe_parameter("vision.fps")
    assert descriptor.description and descriptor.floating_point_range[0].to_value == 240.0
    assert encoder.describe_parameter("model.name").read_only


def test_a_model_that_cannot_load_leaves_the_node_up_and_saying_why(request, probe, tmp_path):
    missing = str(tmp_path / "no-such-model")
    running = _running(request, lambda **kw: [LlmNode(**kw)],
                       **{"model.name": missing, "model.fallback_to_tiny": False})
    assert running.started == [False]
    response = probe.ask("Is anyone there?")
    assert not response.success and "unconfigured" in response.error and "does not exist" in response.error
    wait_for(lambda: probe.levels.get("streamvlm: /llm_node"), 30, "diagnostics")
    level, message = probe.levels["streamvlm: /llm_node"]
    assert level == b"\x02" and "does not exist" in message
