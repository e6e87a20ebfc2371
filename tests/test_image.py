import numpy as np
import pytest

from streamvlm.image import ImageError, decode_compressed, decode_raw, encode_compressed, encode_raw

RNG = np.random.default_rng(3)
FRAME = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_color_round_trip_is_lossless(encoding):
    data, step = encode_raw(FRAME, encoding)
    np.testing.assert_array_equal(decode_raw(encoding, 6, 10, step, data), FRAME)


def test_mono_becomes_gray_rgb():
    data, step = encode_raw(FRAME, "mono8")
    out = decode_raw("mono8", 6, 10, step, data)
    assert out.shape == (6, 10, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_row_padding_is_skipped():
    padded = np.zeros((6, 32), np.uint8)
    padded[:, :30] = FRAME.reshape(6, 30)
    np.testing.assert_array_equal(decode_raw("rgb8", 6, 10, 32, padded.tobytes()), FRAME)


def test_16_bit_keeps_the_high_byte():
    values = np.array([[0x1234, 0xFF00]], dtype="<u2")
    out = decode_raw("mono16", 1, 2, 4, values.tobytes())
    assert out[0, :, 0].tolist() == [0x12, 0xFF]
    big = decode_raw("mono16", 1, 2, 4, values.astype(">u2").tobytes(), is_bigendian=True)
    np.testing.assert_array_equal(big, out)


@pytest.mark.parametrize("encoding", ["bayer_rggb8", "yuyv", "uyvy", "bgra8"])
def test_other_camera_encodings_decode(encoding):
    channels = {"bayer_rggb8": 1, "yuyv": 2, "uyvy": 2, "bgra8": 4}[encoding]
    out = decode_raw(encoding, 4, 6, 6 * channels, bytes(4 * 6 * channels))
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8


def test_png_is_lossless_and_jpeg_close():
    np.testing.assert_array_equal(decode_compressed("png", encode_compressed(FRAME, "png")), FRAME)
    smooth = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (48, 1, 3))
    jpeg = decode_compressed("jpeg", encode_compressed(smooth, "jpeg", 95))
    assert np.abs(jpeg.astype(int) - smooth).mean() < 3


@pytest.mark.parametrize(
    "args, reason",
    [
        (("rgb8", 6, 10, 30, b"\0" * 10), "needs more"),
        (("rgb8", 6, 10, 20, b"\0" * 200), "shorter than a row"),
        (("rgb9", 6, 10, 30, b"\0" * 180), "unsupported encoding"),
        (("rgb8", 0, 10, 30, b""), "empty"),
        (("rgb8", 100_000, 100_000, 300_000, b""), "limit"),
        (("yuyv", 2, 3, 6, b"\0" * 12), "even width"),
    ],
)
def test_bad_raw_images_say_why(args, reason):
    with pytest.raises(ImageError, match=reason):
        decode_raw(*args)


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff garbage", encode_compressed(FRAME, "jpeg")[:40]])
def test_bad_compressed_images_say_why(data):
    with pytest.raises(ImageError):
        decode_compressed("jpeg", data)
