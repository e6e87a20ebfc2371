"""Camera images in ROS encodings -> RGB uint8 arrays, without ROS.

Used by the bag reader and by the nodes, so that a message from a live topic and the same
message from a bag decode identically. Unknown or malformed input raises `ImageError`
with a reason; callers count and drop such frames.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image


class ImageError(ValueError):
    """The image cannot be decoded; the message says why."""


# encoding -> (channels, numpy dtype, cv2 conversion to RGB or None)
_RAW = {
    "rgb8": (3, np.uint8, None),
    "bgr8": (3, np.uint8, cv2.COLOR_BGR2RGB),
    "rgba8": (4, np.uint8, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, np.uint8, cv2.COLOR_BGRA2RGB),
    "mono8": (1, np.uint8, cv2.COLOR_GRAY2RGB),
    "8UC1": (1, np.uint8, cv2.COLOR_GRAY2RGB),
    "8UC3": (3, np.uint8, cv2.COLOR_BGR2RGB),  # OpenCV's default channel order
    "mono16": (1, np.uint16, cv2.COLOR_GRAY2RGB),
    "16UC1": (1, np.uint16, cv2.COLOR_GRAY2RGB),
    "rgb16": (3, np.uint16, None),
    "bgr16": (3, np.uint16, cv2.COLOR_BGR2RGB),
    "bayer_rggb8": (1, np.uint8, cv2.COLOR_BayerBG2RGB),
    "bayer_bggr8": (1, np.uint8, cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg8": (1, np.uint8, cv2.COLOR_BayerGR2RGB),
    "bayer_grbg8": (1, np.uint8, cv2.COLOR_BayerGB2RGB),
    # Packed 4:2:2, two bytes per pixel.
    "uyvy": (2, np.uint8, cv2.COLOR_YUV2RGB_UYVY),
    "yuv422": (2, np.uint8, cv2.COLOR_YUV2RGB_UYVY),
    "yuyv": (2, np.uint8, cv2.COLOR_YUV2RGB_YUYV),
    "yuv422_yuy2": (2, np.uint8, cv2.COLOR_YUV2RGB_YUYV),
}

SUPPORTED_ENCODINGS = tuple(sorted(_RAW))

# Larger frames are refused rather than decoded: 8K is the most any camera here sends.
MAX_PIXELS = 7680 * 4320


def row_bytes(encoding: str, width: int) -> int:
    """Bytes in one row of pixels (without padding) of a supported encoding."""
    channels, dtype, _ = _RAW[encoding]
    return width * channels * np.dtype(dtype).itemsize


def decode_raw(encoding: str, height: int, width: int, step: int, data, is_bigendian: bool = False) -> np.ndarray:
    """A sensor_msgs/Image's fields -> RGB uint8 [height, width, 3]."""
    if encoding not in _RAW:
        raise ImageError(f"unsupported encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    channels, dtype, conversion = _RAW[encoding]
    if height <= 0 or width <= 0:
        raise ImageError(f"empty image {width}x{height}")
    if height * width > MAX_PIXELS:
        raise ImageError(f"image {width}x{height} is larger than the {MAX_PIXELS}-pixel limit")
    if encoding in ("uyvy", "yuv422", "yuyv", "yuv422_yuy2") and width % 2:
        raise ImageError(f"{encoding} needs an even width, got {width}")
    row = row_bytes(encoding, width)
    if step < row:
        raise ImageError(f"step {step} is shorter than a row ({row} bytes for {width} px {encoding})")
    buffer = np.frombuffer(memoryview(data), dtype=np.uint8)
    if buffer.size < step * (height - 1) + row:
        raise ImageError(f"data has {buffer.size} bytes; {width}x{height} {encoding} with step {step} needs more")
    rows = np.lib.stride_tricks.as_strided(buffer, shape=(height, row), strides=(step, 1))
    pixels = rows.copy().view(np.dtype(dtype).newbyteorder(">" if is_bigendian else "<"))
    pixels = pixels.reshape(height, width, channels)
    if pixels.dtype.itemsize == 2:
        pixels = (pixels.astype(np.uint16) >> 8).astype(np.uint8)  # keep the 8 high bits
    if channels == 2:  # packed YUV: cv2 wants [H, W, 2]
        return cv2.cvtColor(pixels, conversion)
    if conversion is None:
        return np.ascontiguousarray(pixels)
    return cv2.cvtColor(pixels if channels > 1 else pixels[..., 0], conversion)


def decode_compressed(fmt: str, data) -> np.ndarray:
    """A sensor_msgs/CompressedImage's fields -> RGB uint8 [H, W, 3] (JPEG, PNG, anything cv2 reads)."""
    buffer = np.frombuffer(memoryview(data), dtype=np.uint8)
    if buffer.size == 0:
        raise ImageError(f"empty compressed image (format {fmt!r})")
    # Read the size from the header (PIL decodes nothing yet), so that a small file
    # cannot make us allocate gigabytes.
    try:
        width, height = Image.open(io.BytesIO(buffer.tobytes())).size
    except Exception as err:
        raise ImageError(f"cannot read {buffer.size} bytes of compressed image (format {fmt!r}): {err}") from None
    if width * height > MAX_PIXELS:
        raise ImageError(f"compressed image {width}x{height} is larger than the {MAX_PIXELS}-pixel limit")
    bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f"cannot decode {buffer.size} bytes of compressed image (format {fmt!r})")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_compressed(frame_rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """RGB uint8 -> JPEG or PNG bytes, for writing CompressedImage messages."""
    ext = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}.get(fmt)
    if ext is None:
        raise ImageError(f"cannot encode format {fmt!r}; use jpeg or png")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, data = cv2.imencode(ext, cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ImageError(f"cv2 could not encode a {frame_rgb.shape} frame as {fmt}")
    return data.tobytes()


def encode_raw(frame_rgb: np.ndarray, encoding: str) -> tuple[bytes, int]:
    """RGB uint8 -> (data, step) for a sensor_msgs/Image in rgb8, bgr8 or mono8."""
    if encoding == "rgb8":
        pixels = frame_rgb
    elif encoding == "bgr8":
        pixels = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)
    elif encoding == "mono8":
        pixels = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY)
    else:
        raise ImageError(f"cannot encode {encoding!r}; use rgb8, bgr8 or mono8")
    pixels = np.ascontiguousarray(pixels)
    return pixels.tobytes(), pixels.shape[1] * (pixels.shape[2] if pixels.ndim == 3 else 1)
