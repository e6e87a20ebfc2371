"""Input fuzzing of what the nodes take from the wire: camera images (raw and compressed)
and vision tokens. Every input either comes out right or is refused with a reason and
counted; nothing else escapes, and the workers behind the nodes keep running.

Hypothesis with a fixed number of examples and derandomized, so CI runs the same inputs
in a bounded time; `--hypothesis-seed` or more examples explore further by hand.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamvlm.image import (MAX_PIXELS, SUPPORTED_ENCODINGS, ImageError, decode_compressed, decode_raw,
                             encode_compressed, row_bytes)
from tally import TALLY

pytestmark = pytest.mark.reliability
FUZZ = settings(max_examples=300, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ODD_ENCODINGS = ["", "RGB8", "rgb9", "bayer_rggb16", "nv12", "32FC1", "jpeg", "mono8\x00", "yuv420"]
WAIT = 60


@st.composite
def raw_images(draw) -> dict:
    """The fields of a sensor_msgs/Image: mostly near-valid, with sizes up to past 8K.

    Hypothesis draws a seed and a seeded generator makes the choices, so each kind of
    input comes at a known rate (hypothesis' own choices lean to the first, simplest ones).
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def pick(*weighted):  # (weight, value) pairs
        weights = np.array([w for w, _ in weighted], dtype=float)
        return weighted[rng.choice(len(weighted), p=weights / weights.sum())][1]

    encoding = str(rng.choice(ODD_ENCODINGS)) if rng.random() < 0.15 else str(rng.choice(SUPPORTED_ENCODINGS))
    height = pick((0.85, int(rng.integers(1, 41))), (0.05, 0), (0.1, int(rng.choice([4320, 4321, 1 << 20]))))
    width = pick((0.85, int(rng.integers(1, 41))), (0.05, 0), (0.1, int(rng.choice([7680, 7682, 1 << 20]))))
    row = row_bytes(encoding, width) if encoding in SUPPORTED_ENCODINGS else 3 * width
    step = pick((0.6, row), (0.25, row + int(rng.integers(1, 17))), (0.1, max(row - int(rng.integers(1, 4)), 0)),
                (0.05, int(rng.integers(0, 1 << 16))))
    needed = step * (height - 1) + row if height > 0 else 0
    size = pick((0.7, needed), (0.2, max(needed + int(rng.integers(-8, 9)), 0)), (0.1, int(rng.integers(0, 4097))))
    if size > 1 << 22:  # keep examples cheap; full 8K frames have their own test below
        size = int(rng.integers(0, 4097))
    return {"encoding": encoding, "height": height, "width": width, "step": step, "data": rng.bytes(size),
            "is_bigendian": bool(rng.random() < 0.3)}


def _valid_picture(seed: int, fmt: str) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_compressed(rng.integers(0, 256, (int(rng.integers(1, 40)), int(rng.integers(1, 40)), 3),
                                          dtype=np.uint8), fmt)


@st.composite
def compressed_images(draw) -> tuple[str, bytes]:
    """(format, data) of a sensor_msgs/CompressedImage: valid, truncated, corrupted or random."""
    fmt = draw(st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8", "", "tiff"]))
    picture = _valid_picture(draw(st.integers(0, 1000)), "png" if fmt == "png" else "jpeg")
    kind = draw(st.sampled_from(["valid", "truncated", "corrupted", "random"]))
    if kind == "truncated":
        picture = picture[:draw(st.integers(0, len(picture) - 1))]
    elif kind == "corrupted":
        at = draw(st.integers(0, len(picture) - 1))
        picture = picture[:at] + draw(st.binary(min_size=1, max_size=16)) + picture[at + 1:]
    elif kind == "random":
        picture = draw(st.binary(max_size=2048))
    return fmt, picture


def _outcome(decode, *args) -> str:
    """Decode; anything but an RGB image or an ImageError fails the test."""
    try:
        rgb = decode(*args)
    except ImageError as err:
        assert str(err), "a refusal must say why"
        return "refused"
    assert isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    return "decoded"


@FUZZ
@given(raw_images())
def test_raw_images_decode_or_are_refused_with_a_reason(fields):
    outcome = _outcome(decode_raw, fields["encoding"], fields["height"], fields["width"], fields["step"],
                       fields["data"], fields["is_bigendian"])
    if outcome == "decoded":
        assert fields["encoding"] in SUPPORTED_ENCODINGS
    TALLY.add("fuzz: raw Image", outcome)


@FUZZ
@given(compressed_images())
def test_compressed_images_decode_or_are_refused_with_a_reason(image):
    TALLY.add("fuzz: CompressedImage", _outcome(decode_compressed, *image))


def test_8k_frames_decode_and_larger_ones_are_refused_before_allocating():
    width, height = 7680, 4320
    data = bytes(width * height * 3)
    assert decode_raw("rgb8", height, width, width * 3, data).shape == (height, width, 3)
    with pytest.raises(ImageError, match="pixel limit"):
        decode_raw("rgb8", height + 1, width, width * 3, data)
    # A PNG whose header claims 100000 x 100000 is refused from the header, not decoded.
    header = bytearray(encode_compressed(np.zeros((2, 2, 3), np.uint8), "png"))
    header[16:24] = (100_000).to_bytes(4, "big") * 2
    with pytest.raises(ImageError):
        decode_compressed("png", bytes(header))
    assert width * height == MAX_PIXELS
    TALLY.add("fuzz: raw Image", "decoded")
    TALLY.add("fuzz: raw Image", "refused")
    TALLY.add("fuzz: CompressedImage", "refused")


# ---- through the nodes' conversion code and the workers behind them (needs the ROS messages)

def _ros():
    pytest.importorskip("rclpy", reason="rclpy is not installed (make setup)")
    pytest.importorskip("streamvlm_msgs.msg", reason="streamvlm_msgs is not built (make setup)")


def _wait(condition, what: str):
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


@settings(FUZZ, max_examples=150)
@given(st.lists(st.one_of(raw_images(), compressed_images()), min_size=1, max_size=4))
def test_the_encoder_worker_counts_every_bad_image_and_goes_on(tiny_model, messages):
    _ros()
    from sensor_msgs.msg import CompressedImage, Image

    from streamvlm.config import PipelineConfig
    from streamvlm.ros.convert import image_to_rgb
    from streamvlm.vision.stage import VisionStage
    from streamvlm.vision.worker import VisionWorker

    cfg = PipelineConfig().replace(model={"name": "tiny"}, vision={"fps": 0.0})
    lines, out = [], []
    worker = VisionWorker(VisionStage(cfg, tiny_model), image_to_rgb, out.append, lines.append)
    worker.start()
    try:
        for i, fields in enumerate(messages):
            msg = Image(**fields) if isinstance(fields, dict) else CompressedImage(format=fields[0], data=fields[1])
            msg.header.stamp.sec = i + 1
            worker.submit((i + 1) * 1_000_000_000, msg)
            # One at a time, so no frame is replaced while the encoder is busy.
            _wait(lambda: worker.processed + worker.dropped_invalid + worker.failed == i + 1, "the encoder")
        assert worker.failed == 0, lines
        assert worker._thread.is_alive()
        assert len(lines) <= 2, lines  # one line per kind of drop per period, however many
        assert all(batch.embeddings.isfinite().all() for batch in out)
    finally:
        worker.stop()
    TALLY.add("fuzz: images through the encoder worker", "encoded", worker.processed)
    TALLY.add("fuzz: images through the encoder worker", "dropped (counted)", worker.dropped_invalid)


TOKEN_DTYPES = ["float32", "float16", "bfloat16"]


@st.composite
def token_messages(draw, hidden: int) -> dict:
    """Fields of a streamvlm_msgs/VisionTokens: right or wrong sizes, types, values and stamps."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = str(rng.choice(["float64", "int8", "", "FLOAT32"])) if rng.random() < 0.05 else str(rng.choice(TOKEN_DTYPES))
    count = int(rng.integers(1, 13)) if rng.random() < 0.95 else int(rng.choice([0, 1 << 30]))
    dim = hidden if rng.random() < 0.92 else int(rng.integers(0, 2 * hidden))
    itemsize = {"float32": 4, "float64": 8, "int8": 1}.get(dtype, 2)
    size = count * dim * itemsize
    if rng.random() < 0.05 or size > 1 << 20:
        size = int(rng.integers(0, 4097))
    values = rng.standard_normal(size // itemsize + 1) * 0.02
    if rng.random() < 0.1:
        values[rng.integers(0, len(values))] = rng.choice([np.nan, np.inf, -np.inf])
    as_type = {"float32": np.float32, "float64": np.float64, "int8": np.int8}.get(dtype, np.float16)
    with np.errstate(invalid="ignore"):
        data = values.astype(as_type).tobytes()[:size]
    rows, cols = ([(14, 14)] * 7 + [(0, 0), (2, 2), (1 << 16, 1 << 16)])[int(rng.integers(0, 10))]
    positions = None if rng.random() < 0.9 else [int(p) for p in rng.integers(0, 300, int(rng.integers(0, 15)))]
    return {"dtype": dtype, "num_tokens": count, "dim": dim, "data": data, "grid_rows": rows,
            "grid_cols": cols, "positions": positions, "stamp_s": float(rng.integers(0, 120)) / 4,
            "model": "tiny" if rng.random() < 0.95 else str(rng.choice(["", "other-model"]))}


@settings(FUZZ, max_examples=100)
@given(st.data())
def test_the_language_worker_counts_every_bad_token_message_and_goes_on(tiny_model, data):
    _ros()
    from streamvlm_msgs.msg import VisionTokens

    from streamvlm.config import PipelineConfig
    from streamvlm.llm.stage import LanguageStage
    from streamvlm.llm.worker import LanguageWorker
    from streamvlm.ros.convert import msg_to_batch

    hidden = tiny_model.decoder.config.hidden_size
    messages = data.draw(st.lists(token_messages(hidden), min_size=1, max_size=6))
    cfg = PipelineConfig().replace(model={"name": "tiny"}, language={"caption_interval_s": 0.0})
    lines = []
    worker = LanguageWorker(LanguageStage(cfg, tiny_model), max_pending_frames=64, warn=lines.append)
    worker.start()
    unconvertible = 0
    try:
        for fields in messages:
            positions = fields.pop("positions")
            positions = list(range(min(fields["num_tokens"], 196))) if positions is None else positions
            stamp_s = fields.pop("stamp_s")
            msg = VisionTokens(**fields, positions=positions)
            msg.header.stamp.sec, msg.header.stamp.nanosec = int(stamp_s), int(stamp_s % 1 * 1e9)
            try:
                batch = msg_to_batch(msg)
            except ValueError as err:
                unconvertible += 1
                worker.drop_invalid(str(err))
                continue
            worker.submit_batch(batch)
        answer = worker.ask("What is there?").result(WAIT)  # after every frame before it
        counted = worker.ingested + worker.dropped_invalid + worker.dropped_late + worker.dropped_overflow
        assert worker.received == len(messages) and counted == len(messages), worker.status()
        assert worker.failed == 0, lines
        assert answer.success or answer.error, "every question gets an answer or a reason"
        assert worker._thread.is_alive()
    finally:
        worker.stop()
    TALLY.add("fuzz: VisionTokens through the language worker", "ingested", worker.ingested)
    TALLY.add("fuzz: VisionTokens through the language worker", "dropped invalid (counted)", worker.dropped_invalid)
    TALLY.add("fuzz: VisionTokens through the language worker", "dropped late (counted)", worker.dropped_late)
