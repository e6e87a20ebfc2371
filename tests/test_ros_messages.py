"""streamvlm_msgs as built by `make setup`: importable through rclpy, and wire-compatible
with what streamvlm.bag writes without ROS, so bags made here replay onto live topics.

Compared by decoding each side's bytes with the other side (CDR alignment padding is
unspecified, and Fast CDR leaves it uninitialised, so raw bytes may differ there).
"""

from __future__ import annotations

import numpy as np
import pytest

from streamvlm.bag import ALERT, ANSWER, CAPTION, VISION_TOKENS, typestore

pytestmark = pytest.mark.ros
serialization = pytest.importorskip("rclpy.serialization", reason="rclpy is not installed (make setup)")
msgs = pytest.importorskip("streamvlm_msgs.msg", reason="streamvlm_msgs is not built (make setup)")
srvs = pytest.importorskip("streamvlm_msgs.srv")

STORE = typestore()
Time = STORE.types["builtin_interfaces/msg/Time"]
Header = STORE.types["std_msgs/msg/Header"]


def assert_same_on_the_wire(ros_msg, ours, msgtype):
    ours_bytes = bytes(STORE.serialize_cdr(ours, msgtype))
    ros_bytes = serialization.serialize_message(ros_msg)
    assert len(ours_bytes) == len(ros_bytes)
    assert serialization.deserialize_message(ours_bytes, type(ros_msg)) == ros_msg
    assert STORE.serialize_cdr(STORE.deserialize_cdr(ros_bytes, msgtype), msgtype) == STORE.serialize_cdr(ours, msgtype)


def test_caption():
    ros_msg = msgs.Caption(text="people walk", latency_ms=12.5)
    ros_msg.header.stamp.sec, ros_msg.header.frame_id, ros_msg.start.sec = 5, "camera", 1
    ours = STORE.types[CAPTION](header=Header(stamp=Time(sec=5, nanosec=0), frame_id="camera"),
                                start=Time(sec=1, nanosec=0), text="people walk", latency_ms=12.5)
    assert_same_on_the_wire(ros_msg, ours, CAPTION)


def test_answer():
    ros_msg = msgs.Answer(question="q", answer="a hall", success=True, latency_ms=3.0)
    stamp_type = type(ros_msg.header.stamp)
    ros_msg.evidence = [stamp_type(sec=9), stamp_type(sec=10, nanosec=5)]
    ros_msg.evidence_cameras = ["front", "left"]
    ours = STORE.types[ANSWER](header=Header(stamp=Time(sec=0, nanosec=0), frame_id=""), question="q",
                               answer="a hall", success=True, error="", latency_ms=3.0,
                               evidence=[Time(sec=9, nanosec=0), Time(sec=10, nanosec=5)],
                               evidence_cameras=["front", "left"])
    assert_same_on_the_wire(ros_msg, ours, ANSWER)


def test_alert():
    ros_msg = msgs.Alert(rule="a red object is visible", camera="front", text="a red object is visible (front 0:12)",
                         probability=0.75, evidence_cameras=["front", "left"])
    stamp_type = type(ros_msg.header.stamp)
    ros_msg.evidence = [stamp_type(sec=11), stamp_type(sec=12, nanosec=7)]
    ours = STORE.types[ALERT](header=Header(stamp=Time(sec=0, nanosec=0), frame_id=""), rule="a red object is visible",
                              camera="front", text="a red object is visible (front 0:12)", probability=0.75,
                              evidence=[Time(sec=11, nanosec=0), Time(sec=12, nanosec=7)],
                              evidence_cameras=["front", "left"])
    assert_same_on_the_wire(ros_msg, ours, ALERT)


def test_vision_tokens():
    data = np.arange(12, dtype=np.float32).tobytes()
    ros_msg = msgs.VisionTokens(frame_index=3, model="tiny", num_tokens=3, dim=1, dtype="float32",
                                data=data, grid_rows=2, grid_cols=2, positions=[0, 1, 3], novelty=0.5,
                                camera="front")
    ours = STORE.types[VISION_TOKENS](
        header=Header(stamp=Time(sec=0, nanosec=0), frame_id=""), frame_index=3, model="tiny", num_tokens=3,
        dim=1, dtype="float32", data=np.frombuffer(data, np.uint8), grid_rows=2, grid_cols=2,
        positions=np.array([0, 1, 3], np.uint32), novelty=0.5, reuse_ratio=0.0, camera="front")
    assert_same_on_the_wire(ros_msg, ours, VISION_TOKENS)


def test_ask_service_has_the_designed_fields():
    response = srvs.Ask.Response()
    fields = set(response.get_fields_and_field_types())
    assert {"answer", "success", "error", "latency_ms", "stamp", "evidence", "evidence_cameras"} <= fields
    assert set(srvs.Ask.Request().get_fields_and_field_types()) == {"question", "max_new_tokens"}


def test_caption_crosses_dds_under_the_test_profile():
    """A real publisher and subscription in this test's own domain, on the loopback-only profile."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("caption_probe", context=context)
        received = []
        node.create_subscription(msgs.Caption, "captions", received.append, 10)
        publisher = node.create_publisher(msgs.Caption, "captions", 10)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        message = msgs.Caption(text="people walk")
        deadline = node.get_clock().now().nanoseconds + 10 * 10**9
        while not received and node.get_clock().now().nanoseconds < deadline:
            publisher.publish(message)
            executor.spin_once(timeout_sec=0.1)
        assert received and received[0].text == "people walk"
        executor.shutdown()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_vision_tokens_round_trip_through_the_wire(dtype):
    import torch

    from streamvlm.ros import convert
    from streamvlm.types import TokenBatch

    embeddings = torch.randn(5, 8)
    batch = TokenBatch(stamp_ns=12 * 10**9 + 5, frame_index=4, embeddings=embeddings,
                       positions=torch.tensor([0, 2, 3, 7, 8]), grid=(3, 3), novelty=0.25, reuse_ratio=0.5,
                       model="tiny", frame_id="front")
    wire = serialization.serialize_message(convert.batch_to_msg(batch, dtype))
    back = convert.msg_to_batch(serialization.deserialize_message(wire, msgs.VisionTokens))
    expected = embeddings.to(convert.TOKEN_DTYPES[dtype])
    assert back.embeddings.dtype == expected.dtype and torch.equal(back.embeddings, expected)
    assert (back.stamp_ns, back.frame_index, back.grid, back.model, back.frame_id) == \
        (batch.stamp_ns, 4, (3, 3), "tiny", "front")
    assert back.positions.tolist() == [0, 2, 3, 7, 8] and back.novelty == 0.25 and back.reuse_ratio == 0.5


@pytest.mark.parametrize("change, reason", [
    ({"dtype": "int8"}, "unknown token dtype"),
    ({"data": b"\x00" * 12}, "needs 160"),
    ({"num_tokens": 0}, "empty token matrix"),
    ({"positions": [0, 1, 2, 3, 9]}, "inside the 3x3 grid"),
    ({"positions": [0, 1, 1, 2, 3]}, "must ascend"),
    ({"positions": [0, 1]}, "2 positions for 5 tokens"),
])
def test_malformed_vision_tokens_are_refused_with_reasons(change, reason):
    import torch

    from streamvlm.ros import convert
    from streamvlm.types import TokenBatch

    batch = TokenBatch(stamp_ns=1, frame_index=0, embeddings=torch.zeros(5, 8), positions=torch.arange(5),
                       grid=(3, 3))
    msg = convert.batch_to_msg(batch)
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(ValueError, match=reason):
        convert.msg_to_batch(msg)
