"""Bag round trips: both storage formats, raw and compressed images, and the pipeline's outputs."""

from __future__ import annotations

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from streamvlm.bag import ANSWER, CAPTION, BagFrames, BagWriter, typestore
from streamvlm.types import Answer, Caption

RNG = np.random.default_rng(5)
FRAMES = [RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(3)]
# JPEG is judged on smooth images: on noise its chroma subsampling says nothing useful.
_RAMP = np.linspace(0, 255, 32)[None, :, None] * np.ones((24, 1, 3))
SMOOTH = [np.clip(_RAMP + 20 * i, 0, 255).astype(np.uint8) for i in range(3)]
S = 1_000_000_000


def _write(path, storage, kind):
    with BagWriter(path, storage) as bag:
        for i, frame in enumerate(SMOOTH if kind == "jpeg" else FRAMES):
            stamp = 1_700_000_000 * S + i * S // 10
            if kind in ("jpeg", "png"):
                bag.write_compressed("/cam/image/compressed", stamp, frame, kind, quality=95)
            else:
                bag.write_image("/cam/image", stamp, frame, kind)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("kind", ["rgb8", "bgr8", "mono8", "jpeg", "png"])
def test_images_round_trip(tmp_path, storage, kind):
    path = tmp_path / "bag"
    _write(path, storage, kind)
    frames = list(BagFrames(path))
    assert [f.stamp_ns - frames[0].stamp_ns for f in frames] == [0, S // 10, 2 * S // 10]
    for got, sent in zip(frames, SMOOTH if kind == "jpeg" else FRAMES):
        if kind in ("rgb8", "bgr8", "png"):
            np.testing.assert_array_equal(got.rgb, sent)
        elif kind == "mono8":
            gray = (0.299 * sent[..., 0] + 0.587 * sent[..., 1] + 0.114 * sent[..., 2])
            assert np.abs(got.rgb[..., 0].astype(float) - gray).max() <= 1
        else:
            assert np.abs(got.rgb.astype(int) - sent).mean() < 3


def test_bare_mcap_file_and_topic_choice(tmp_path):
    path = tmp_path / "bag"
    with BagWriter(path, "mcap") as bag:
        bag.write_image("/a", S, FRAMES[0])
        bag.write_image("/b", S, FRAMES[1])
    with pytest.raises(ValueError, match="choose one with --topic"):
        BagFrames(path)
    frames = list(BagFrames(next(path.glob("*.mcap")), "/b"))
    np.testing.assert_array_equal(frames[0].rgb, FRAMES[1])


def test_undecodable_frames_are_counted_drops(tmp_path):
    path = tmp_path / "bag"
    store = typestore()
    with BagWriter(path, "mcap") as bag:
        bag.write_compressed("/cam", S, FRAMES[0], "png")
        broken = store.types["sensor_msgs/msg/CompressedImage"](
            header=bag._header(2 * S, "cam"), format="jpeg", data=np.frombuffer(b"not a jpeg", np.uint8))
        bag._write("/cam", "sensor_msgs/msg/CompressedImage", 2 * S, broken)
        bag.write_compressed("/cam", 3 * S, FRAMES[1], "png")
    frames = BagFrames(path)
    assert [f.stamp_ns for f in frames] == [S, 3 * S]
    assert frames.dropped == 1


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_outputs_are_readable_with_streamvlm_types(tmp_path, storage):
    path = tmp_path / "out"
    with BagWriter(path, storage) as bag:
        bag.write_caption("/captions", Caption("people walk", 1 * S, 5 * S, 12.5))
        bag.write_answer("/answers", Answer("what?", "a hall", 10 * S, 30.0, [9 * S, 10 * S]))
    with AnyReader([path], default_typestore=typestore()) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        assert types == {"/captions": CAPTION, "/answers": ANSWER}
        messages = {c.topic: reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()}
    caption, answer = messages["/captions"], messages["/answers"]
    assert caption.text == "people walk" and caption.start.sec == 1 and caption.header.stamp.sec == 5
    assert answer.answer == "a hall" and answer.success and [t.sec for t in answer.evidence] == [9, 10]
