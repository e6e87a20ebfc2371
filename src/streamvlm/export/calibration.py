"""INT8 calibration: frames picked from a bag (`streamvlm calib make`), and the entropy
calibrator TensorRT reads them through when it builds an INT8 engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PATTERN = "frame_{:05d}.png"


def make_calibration(bag: Path, out: Path, count: int, topic: str | None = None) -> int:
    """Write `count` frames spread evenly over the bag's image topic as PNGs into `out`."""
    from streamvlm.bag import BagFrames

    frames = BagFrames(bag, topic)
    step = max(1, len(frames) // count)  # keep every step-th frame, never the whole bag in memory
    images = [f.rgb for i, f in enumerate(frames) if i % step == 0]
    if not images:
        raise ValueError(f"no decodable frames in {bag}")
    picked = [images[int(i)] for i in np.linspace(0, len(images) - 1, min(count, len(images)))]
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("frame_*.png"):
        stale.unlink()
    for i, rgb in enumerate(picked):
        Image.fromarray(rgb).save(out / PATTERN.format(i))
    return len(picked)


def calibration_frames(folder: Path) -> list[np.ndarray]:
    paths = sorted(Path(folder).glob("frame_*.png"))
    if not paths:
        raise FileNotFoundError(f"no calibration frames in {folder}: run `streamvlm calib make BAG --out {folder}`")
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def EntropyCalibrator(trt, folder: Path, info: dict, graph: str, cache: Path):
    """A trt.IInt8EntropyCalibrator2 feeding the graph's inputs from the calibration frames,
    one frame per batch. The delta graph gets every token as dynamic, with the cached keys
    and values the full graph gives for the same frame (computed in torch)."""
    import torch

    from streamvlm.backends.graphs import FullGraph
    from streamvlm.export.loading import load_tower

    tower, _, _, preprocess = load_tower(info["model"])
    tower_full = FullGraph(tower).eval().cuda()
    frames = calibration_frames(folder)

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.next = 0
            self.held = {}

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            if self.next >= len(frames):
                return None
            pixels = preprocess(frames[self.next]).float().cuda()
            self.next += 1
            feeds = {"pixels": pixels}
            if graph == "delta":
                with torch.inference_mode():
                    _, keys, values = tower_full(pixels)
                feeds.update(index=torch.arange(info["patches"], device="cuda"), keys=keys, values=values)
            self.held = {name: feeds[name].contiguous() for name in names}
            return [self.held[name].data_ptr() for name in names]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data):
            cache.write_bytes(bytes(data))

    return _Calibrator()
