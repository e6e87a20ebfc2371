"""A picture of what the model looks at: the camera frame with the patches the delta cache
recomputed tinted and the tokens the pruner sent to the LLM outlined.

For the debug image topic and `replay --debug-video`. Drawn only when asked for: the
vision stage keeps each frame's view as tensors where they were made (no copy to the
host in the frame loop), and `draw` brings them over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

RECOMPUTED_RGB = (255, 60, 30)  # tint of a patch the ViT recomputed, stronger the more layers did
KEPT_RGB = (40, 230, 90)  # outline of a token sent to the LLM
MAX_TINT = 0.5
LABEL_ROWS = 22
MAX_SIDE = 960  # larger frames are drawn scaled down: a debug stream should not cost a camera's bandwidth


@dataclass
class FrameView:
    """What the vision stage did with one frame."""

    stamp_ns: int
    recomputed: torch.Tensor | None  # [P] share of the ViT's layers that recomputed each patch (None: not known)
    patch_grid: tuple[int, int]  # (rows, cols) of ViT patches
    kept: torch.Tensor  # [K] row-major indices into the token grid: the tokens sent to the LLM
    token_grid: tuple[int, int]  # (rows, cols) of tokens after the projector and pooling
    extent: float = 1.0  # share of the frame's side the patch grid covers (from the top-left)


def draw(frame_rgb: np.ndarray, view: FrameView) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> the same frame (scaled to at most MAX_SIDE) with `view` drawn on it."""
    height, width = frame_rgb.shape[:2]
    scale = min(1.0, MAX_SIDE / max(height, width))
    out = frame_rgb if scale == 1.0 else cv2.resize(frame_rgb, (round(width * scale), round(height * scale)),
                                                    interpolation=cv2.INTER_AREA)
    out = np.ascontiguousarray(out).copy()
    rows, cols = view.patch_grid
    ys = np.round(np.linspace(0, view.extent * out.shape[0], rows + 1)).astype(int)
    xs = np.round(np.linspace(0, view.extent * out.shape[1], cols + 1)).astype(int)
    if view.recomputed is not None:
        share = view.recomputed.detach().float().cpu().numpy().reshape(rows, cols)
        alpha = cv2.resize(share * MAX_TINT, (xs[-1], ys[-1]), interpolation=cv2.INTER_NEAREST)[..., None]
        area = out[:ys[-1], :xs[-1]].astype(np.float32)
        tinted = area * (1 - alpha) + np.array(RECOMPUTED_RGB, np.float32) * alpha
        out[:ys[-1], :xs[-1]] = np.clip(tinted + 0.5, 0, 255).astype(np.uint8)
    token_rows, token_cols = view.token_grid
    per_row, per_col = math.ceil(rows / token_rows), math.ceil(cols / token_cols)  # patches a token spans
    for index in view.kept.detach().cpu().tolist():
        r, c = divmod(int(index), token_cols)
        top, bottom = ys[min(r * per_row, rows)], ys[min((r + 1) * per_row, rows)]
        left, right = xs[min(c * per_col, cols)], xs[min((c + 1) * per_col, cols)]
        cv2.rectangle(out, (int(left), int(top)), (int(right) - 1, int(bottom) - 1), KEPT_RGB, 1)
    changed = 0.0 if view.recomputed is None else float((view.recomputed > 0).float().mean())
    label = f"recomputed {changed:.0%} of patches, sent {view.kept.numel()}/{token_rows * token_cols} tokens"
    band = out[:LABEL_ROWS]  # darkened under the label: readable on any frame
    band[:] = (band.astype(np.float32) * 0.35).astype(np.uint8)
    cv2.putText(out, label, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return out


class DebugVideo:
    """Writes drawn frames into a video file (mp4v in .mp4, or what OpenCV picks for the suffix)."""

    def __init__(self, path, fps: float):
        self.path, self.fps = str(path), fps
        self._writer = None
        self.frames = 0

    def write(self, frame_rgb: np.ndarray, view: FrameView) -> None:
        drawn = draw(frame_rgb, view)
        if self._writer is None:
            self._size = (drawn.shape[1], drawn.shape[0])
            self._writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size)
            if not self._writer.isOpened():
                raise ValueError(f"OpenCV cannot write a video to {self.path}")
        if (drawn.shape[1], drawn.shape[0]) != self._size:  # the camera changed size mid-stream
            drawn = cv2.resize(drawn, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


class DebugVideos:
    """One `DebugVideo` per camera: `OUT.mp4` for the only camera, `OUT-front.mp4` for a
    camera named front (cameras' frames differ in size and scene; one file each)."""

    def __init__(self, path, fps: float):
        self.path, self.fps = Path(path), fps
        self.videos: dict[str, DebugVideo] = {}

    def write(self, frame_rgb: np.ndarray, view: FrameView, camera: str = "") -> None:
        video = self.videos.get(camera)
        if video is None:
            path = self.path if not camera else self.path.with_name(f"{self.path.stem}-{camera}{self.path.suffix}")
            video = self.videos[camera] = DebugVideo(path, self.fps)
        video.write(frame_rgb, view)

    @property
    def frames(self) -> int:
        return sum(video.frames for video in self.videos.values())

    def close(self) -> None:
        for video in self.videos.values():
            video.close()
