"""The vision backends side by side: full-frame graph and delta cache, per frame, on a video.

The tower's two graphs are exported to ONNX (into a temporary directory) and checked, then
every frame runs, for each backend in turn (alternating which goes first): the full-frame
graph alone (full_ms), and the delta cache in threshold mode on that backend (delta_ms,
whatever it decides for the frame: full, partial or reused, as the cache runs in use).
Reported per backend: median ms per frame of each. ort_vs_torch_full = torch full_ms /
onnxruntime full_ms; ort_delta_speedup_kept = (ort full / ort delta) / (torch full /
torch delta): how much of the delta cache's speedup survives on onnxruntime.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from streamvlm.backends.onnxruntime_backend import OnnxRuntimeBackend
from streamvlm.backends.torch_backend import TorchBackend
from streamvlm.bench.measure import median, progress
from streamvlm.bench.vision import _frames, _tower
from streamvlm.export.onnx_export import DELTA, FULL, export_onnx
from streamvlm.vision.delta_cache import DeltaSettings, DeltaViT


def run(args) -> dict:
    tower, preprocess = _tower(args.size, torch.float32, "cpu")
    frames = _frames(args.video, args.frames)
    with tempfile.TemporaryDirectory(prefix="streamvlm-bench-") as tmp:
        info = export_onnx(tower, f"bench-{args.size}", Path(tmp), 384)
        folder = Path(info["dir"])
        backends = {"torch": TorchBackend(tower),
                    "onnxruntime": OnnxRuntimeBackend(folder / FULL, folder / DELTA, providers=args.providers)}
        caches = {name: DeltaViT(tower, DeltaSettings(), backend) for name, backend in backends.items()}
        times = {name: {"full": [], "delta": []} for name in backends}
        kinds = {"full": 0, "partial": 0, "reused": 0}
        bar = progress(len(frames), "backends")
        for i, frame in enumerate(frames):
            pixels = preprocess(frame)
            order = list(backends) if i % 2 == 0 else list(reversed(backends))
            for name in order:
                start = time.perf_counter()
                backends[name].full(pixels)
                times[name]["full"].append((time.perf_counter() - start) * 1e3)
                start = time.perf_counter()
                caches[name](pixels)
                times[name]["delta"].append((time.perf_counter() - start) * 1e3)
            kinds[caches["torch"].last.kind] += 1
            bar.update()
        bar.close()
        described = {name: backend.describe() for name, backend in backends.items()}
        gflop = caches["torch"].full_flops / 1e9
    ms = {name: {"full_ms": round(median(t["full"]), 2), "delta_ms": round(median(t["delta"]), 2)}
          for name, t in times.items()}
    torch_ms, ort_ms = ms["torch"], ms["onnxruntime"]
    return {
        "backends": ms,
        "ort_vs_torch_full": round(torch_ms["full_ms"] / ort_ms["full_ms"], 3),
        "ort_delta_speedup_kept": round((ort_ms["full_ms"] / ort_ms["delta_ms"])
                                        / (torch_ms["full_ms"] / torch_ms["delta_ms"]), 3),
        "delta_speedup": {name: round(m["full_ms"] / m["delta_ms"], 3) for name, m in ms.items()},
        # Counted matmul FLOPs of a full frame over its median time: how close each runs to the machine.
        "full_gflop": round(gflop, 2),
        "full_gflops_per_s": {name: round(gflop / (m["full_ms"] / 1e3), 1) for name, m in ms.items()},
        "max_abs_diff": info["max_abs_diff"],
        "passes": kinds,
        "frames": len(frames),
        "size": args.size,
        "running": described,
        "threads": torch.get_num_threads(),
    }
