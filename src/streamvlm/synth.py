"""Synthetic camera streams with known ground truth, deterministic from a seed.

A static camera looks at a textured background with sensor noise; objects (a shape, a
colour, a size) appear at known frames and places, stay a while, and leave. Benchmarks
use the ground truth to ask what a pipeline kept: e.g. whether the tokens covering an
object were sent to the LLM in the frame where it appeared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import cv2
import numpy as np

from streamvlm.types import Frame

COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (235, 215, 40),
    "cyan": (40, 200, 210), "magenta": (200, 40, 190), "white": (245, 245, 245), "black": (15, 15, 15),
    "orange": (245, 140, 20),
}
SHAPES = ("rectangle", "ellipse", "triangle")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end exclusive
    appear: int  # first frame it is visible
    leave: int  # first frame it is gone

    def visible(self, frame: int) -> bool:
        return self.appear <= frame < self.leave


class SyntheticScene:
    """`frames` frames at `fps`; one object appears every `appear_every` frames (after the first
    few), at a free place, and stays for a random lifetime in `lifetime` frames."""

    def __init__(self, seed: int, frames: int, size: tuple[int, int] = (480, 640), fps: float = 1.0,
                 appear_every: int = 4, lifetime: tuple[int, int] = (8, 40), object_px: tuple[int, int] = (50, 130),
                 noise: float = 2.0):
        self.seed, self.frames, self.size, self.fps, self.noise = seed, frames, size, fps, noise
        rng = np.random.default_rng(seed)
        self.background = _texture(rng, size)
        self.objects: list[SceneObject] = []
        for appear in range(appear_every, frames, appear_every):
            box = self._free_box(rng, appear, object_px)
            if box is None:
                continue  # the frame is full at that moment
            leave = appear + int(rng.integers(lifetime[0], lifetime[1] + 1))
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            self.objects.append(SceneObject(shape, colour, box, appear, leave))

    def _free_box(self, rng, frame: int, px: tuple[int, int]) -> tuple[int, int, int, int] | None:
        height, width = self.size
        for _ in range(50):
            w, h = (int(v) for v in rng.integers(px[0], px[1] + 1, size=2))
            x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            box = (x0, y0, x0 + w, y0 + h)
            if not any(_overlap(box, o.box) for o in self.objects if o.visible(frame) or o.appear == frame):
                return box
        return None

    def stamp_ns(self, index: int) -> int:
        return round(index * 1e9 / self.fps)

    def frame(self, index: int) -> np.ndarray:
        """RGB uint8 [H, W, 3] of frame `index`: background, noise, then the visible objects."""
        rng = np.random.default_rng((self.seed, index))
        image = self.background + rng.normal(0.0, self.noise, self.background.shape)
        image = np.clip(image, 0, 255).astype(np.uint8)
        for obj in self.objects:
            if obj.visible(index):
                _draw(image, obj.shape, obj.box, COLOURS[obj.colour])
        return image

    def mask(self, obj: SceneObject) -> np.ndarray:
        """[H, W] bool: the pixels the object covers."""
        canvas = np.zeros((*self.size, 3), np.uint8)
        _draw(canvas, obj.shape, obj.box, (255, 255, 255))
        return canvas[..., 0] > 0

    def appearing(self, index: int) -> list[SceneObject]:
        return [o for o in self.objects if o.appear == index]

    def __iter__(self) -> Iterator[Frame]:
        for index in range(self.frames):
            stamp = self.stamp_ns(index)
            yield Frame(stamp, stamp, self.frame(index))


def cells_covered(mask: np.ndarray, grid: tuple[int, int], extent: float = 1.0, min_share: float = 0.5) -> np.ndarray:
    """Row-major indices of the token grid cells that the mask covers by at least `min_share`
    of their area. The grid spans `extent` of the frame from its top-left corner (a ViT whose
    patches do not tile the resized frame exactly leaves the right and bottom edge out)."""
    rows, cols = grid
    height, width = mask.shape
    ys = np.round(np.linspace(0, extent * height, rows + 1)).astype(int)
    xs = np.round(np.linspace(0, extent * width, cols + 1)).astype(int)
    share = np.array([[mask[ys[r]:ys[r + 1], xs[c]:xs[c + 1]].mean() for c in range(cols)] for r in range(rows)])
    return np.flatnonzero(share >= min_share)


def _texture(rng, size: tuple[int, int]) -> np.ndarray:
    """A smooth, varied background: a few random colour gratings and blobs."""
    height, width = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.full((height, width, 3), 110.0) + rng.uniform(-30, 30, 3)
    for _ in range(6):
        angle, period = rng.uniform(0, np.pi), rng.uniform(20, 200)
        phase = np.cos(angle) * x + np.sin(angle) * y
        image += np.sin(2 * np.pi * phase / period)[..., None] * rng.uniform(-25, 25, 3)
    for _ in range(12):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(10, 60)
        image += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))[..., None] * rng.uniform(-40, 40, 3)
    return image


def _draw(image: np.ndarray, shape: str, box: tuple[int, int, int, int], rgb) -> None:
    x0, y0, x1, y1 = box
    colour = tuple(int(c) for c in rgb)
    if shape == "rectangle":
        cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), colour, thickness=-1)
    elif shape == "ellipse":
        cv2.ellipse(image, (((x0 + x1) / 2, (y0 + y1) / 2), (x1 - x0, y1 - y0), 0.0), colour, thickness=-1)
    else:
        points = np.array([[(x0 + x1) // 2, y0], [x0, y1 - 1], [x1 - 1, y1 - 1]], np.int32)
        cv2.fillPoly(image, [points], colour)


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
