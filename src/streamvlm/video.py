"""Video files as a stream of frames with stamps, through OpenCV."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import cv2

from streamvlm.types import Frame


class VideoFrames:
    """Frames of a video file, stamped from the container's frame rate (stamp 0 = first frame)."""

    def __init__(self, path: str | Path, max_seconds: float | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no video file {self.path}")
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise ValueError(f"OpenCV cannot open {self.path}")
        self.fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        capture.release()
        limit = int(max_seconds * self.fps) if max_seconds is not None else None
        self.count = min(total, limit) if limit is not None else total
        self.start_ns = 0
        self.dropped = 0

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Frame]:
        capture = cv2.VideoCapture(str(self.path))
        try:
            for index in range(self.count):
                ok, bgr = capture.read()
                if not ok:
                    break
                stamp = round(index * 1e9 / self.fps)
                yield Frame(stamp, stamp, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            capture.release()
