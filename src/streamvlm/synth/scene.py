"""Synthetic camera streams with known ground truth, deterministic from a seed.

A camera looks at a textured background with sensor noise, either still or panning slowly
back and forth; objects (a shape, a colour, a size) appear at known frames and places,
drift at a constant velocity, and leave. Benchmarks use the ground truth to ask what a
pipeline kept (whether the tokens covering an object were sent in the frame where it
appeared) and, through `synth.questions`, whether the answers it gives are right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import cv2
import numpy as np

from streamvlm.types import Frame

# One token each in the SmolLM2 / Llama-family vocabularies, so an answer is one word.
COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (235, 215, 40),
    "cyan": (40, 200, 210), "purple": (200, 40, 190), "white": (245, 245, 245), "black": (15, 15, 15),
    "orange": (245, 140, 20),
}
SHAPES = ("rectangle", "ellipse", "triangle")

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end exclusive


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    box: Box  # where it is on screen in the frame it appears
    appear: int  # first frame it is visible
    leave: int  # first frame it is gone
    velocity: tuple[float, float] = (0.0, 0.0)  # pixels per frame, in the world (not on screen)
    needle: bool = False  # its shape and colour occur nowhere else in the stream

    def visible(self, frame: int) -> bool:
        return self.appear <= frame < self.leave

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


class SyntheticScene:
    """`frames` frames at `fps`; one object appears every `appear_every` frames (after the first
    few) at a free place and stays for a random lifetime in `lifetime` frames.

    Options for harder streams (all off by default):
    `motion` (largest speed in pixels per frame), `pan` (the camera sweeps this many pixels
    left and right, once per `pan_period` frames), `max_visible` (objects on screen at once),
    `grid` (no two visible objects' centres in one cell of a rows x cols grid, so each
    object has a token cell of its own), and `needles` (objects whose shape and colour occur
    once in the whole stream, appearing in the first `needle_before` frames (one that
    finds no room when it is due is left out), staying `needle_lifetime` frames).
    """

    def __init__(self, seed: int, frames: int, size: tuple[int, int] = (480, 640), fps: float = 1.0,
                 appear_every: int = 4, lifetime: tuple[int, int] = (8, 40), object_px: tuple[int, int] = (50, 130),
                 noise: float = 2.0, motion: float = 0.0, pan: float = 0.0, pan_period: float = 90.0,
                 max_visible: int | None = None, grid: tuple[int, int] | None = None, needles: int = 0,
                 needle_before: int = 60, needle_lifetime: tuple[int, int] = (3, 6)):
        self.seed, self.frames, self.size, self.fps, self.noise = seed, frames, size, fps, noise
        self.pan, self.pan_period, self.grid = pan, pan_period, grid
        self.max_visible = max_visible
        self.object_px, self.motion = object_px, motion
        rng = np.random.default_rng(seed)
        self.background = _texture(rng, (size[0], size[1] + math.ceil(pan)))
        combos = [(c, s) for c in COLOURS for s in SHAPES]
        needle_combos = [combos[int(i)] for i in rng.permutation(len(combos))[:needles]]
        common = [c for c in combos if c not in needle_combos]
        needle_at = {}
        if needles:
            slots = [f for f in range(appear_every, min(frames, needle_before), appear_every)]
            for combo, slot in zip(needle_combos, sorted(rng.choice(slots, min(needles, len(slots)), replace=False))):
                needle_at[int(slot)] = combo
        self.objects: list[SceneObject] = []
        for appear in range(appear_every, frames, appear_every):
            needle = appear in needle_at
            span = needle_lifetime if needle else lifetime
            leave = appear + int(rng.integers(span[0], span[1] + 1))
            placed = self._place(rng, appear, leave)
            if placed is None:
                continue  # the frame is full at that moment (a needle planned then is not shown)
            box, velocity = placed
            colour, shape = needle_at[appear] if needle else common[int(rng.integers(len(common)))]
            self.objects.append(SceneObject(shape, colour, box, appear, leave, velocity, needle))

    # --- geometry -------------------------------------------------------------------

    def camera_x(self, index: int) -> float:
        """How far right the camera looks at frame `index`, in background pixels."""
        if not self.pan:
            return 0.0
        return self.pan * (1 - math.cos(2 * math.pi * index / self.pan_period)) / 2

    def box_at(self, obj: SceneObject, index: int) -> Box:
        """The object's box on screen at frame `index` (it may be drawn only while visible)."""
        steps = index - obj.appear
        dx = obj.velocity[0] * steps - (self.camera_x(index) - self.camera_x(obj.appear))
        dy = obj.velocity[1] * steps
        x0, y0, x1, y1 = obj.box
        return (round(x0 + dx), round(y0 + dy), round(x1 + dx), round(y1 + dy))

    def cell_of(self, obj: SceneObject, index: int, grid: tuple[int, int]) -> int:
        """Row-major index of the grid cell holding the object's centre at frame `index`."""
        x0, y0, x1, y1 = self.box_at(obj, index)
        rows, cols = grid
        height, width = self.size
        row = min(rows - 1, max(0, int((y0 + y1) / 2 * rows / height)))
        col = min(cols - 1, max(0, int((x0 + x1) / 2 * cols / width)))
        return row * cols + col

    def _place(self, rng, appear: int, leave: int) -> tuple[Box, tuple[float, float]] | None:
        """A box and velocity keeping the object on screen, clear of the others, for its life."""
        height, width = self.size
        lo, hi = self.object_px
        life = range(appear, min(leave, self.frames))
        others = [o for o in self.objects if o.leave > appear]
        if self.max_visible is not None and any(
                sum(o.visible(i) for o in others) >= self.max_visible for i in life):
            return None
        for _ in range(50):
            w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
            x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            velocity = (0.0, 0.0)
            if self.motion:
                angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.0) * self.motion
                velocity = (round(speed * math.cos(angle), 2), round(speed * math.sin(angle), 2))
            candidate = SceneObject("", "", (x0, y0, x0 + w, y0 + h), appear, leave, velocity)
            if all(self._fits(candidate, others, i) for i in life):
                return candidate.box, velocity
        return None

    def _fits(self, candidate: SceneObject, others: list[SceneObject], index: int) -> bool:
        height, width = self.size
        box = self.box_at(candidate, index)
        if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
            return False
        for other in others:
            if not (other.visible(index) or other.appear == index):
                continue
            if _overlap(box, self.box_at(other, index)):
                return False
            if self.grid and self.cell_of(candidate, index, self.grid) == self.cell_of(other, index, self.grid):
                return False
        return True

    # --- pixels and ground truth ----------------------------------------------------

    def stamp_ns(self, index: int) -> int:
        return round(index * 1e9 / self.fps)

    def frame(self, index: int) -> np.ndarray:
        """RGB uint8 [H, W, 3] of frame `index`: background, noise, then the visible objects."""
        rng = np.random.default_rng((self.seed, index))
        left = round(self.camera_x(index))
        view = self.background[:, left:left + self.size[1]]
        image = np.clip(view + rng.normal(0.0, self.noise, view.shape), 0, 255).astype(np.uint8)
        for obj in self.visible(index):
            _draw(image, obj.shape, self.box_at(obj, index), COLOURS[obj.colour])
        return image

    def mask(self, obj: SceneObject, index: int | None = None) -> np.ndarray:
        """[H, W] bool: the pixels the object covers at frame `index` (default: where it appears)."""
        canvas = np.zeros((*self.size, 3), np.uint8)
        _draw(canvas, obj.shape, self.box_at(obj, obj.appear if index is None else index), (255, 255, 255))
        return canvas[..., 0] > 0

    def visible(self, index: int) -> list[SceneObject]:
        return [o for o in self.objects if o.visible(index)]

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


def _draw(image: np.ndarray, shape: str, box: Box, rgb) -> None:
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


def evaluation_scene(seed: int, frames: int, fps: float = 1.0) -> SyntheticScene:
    """The streams the evaluation model is trained and measured on: objects that drift, at
    most three at a time, each with a 4x4 token cell of its own, four needles in the first
    minute, a still camera for even seeds and a slowly panning one for odd seeds."""
    return SyntheticScene(seed, frames, fps=fps, appear_every=5, lifetime=(6, 25), object_px=(110, 200),
                          motion=2.0, pan=120.0 if seed % 2 else 0.0, max_visible=3, grid=(4, 4), needles=4)
