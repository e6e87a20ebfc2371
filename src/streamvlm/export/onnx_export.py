"""`streamvlm export onnx`: the full-frame and delta graphs of a model's ViT as ONNX files.

Written to `OUT/<model>/vision_full.onnx` and `vision_delta.onnx` (the dynamic token
count n of the delta graph is a dynamic axis, 1..P), with `onnx.json` beside them: the
model, the grid, each file's sha256, and the largest difference from torch measured right
after the export, on random pixels and on several token counts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from streamvlm.backends.artifacts import DELTA, FULL, INFO, model_dir_name, sha256
from streamvlm.backends.graphs import DeltaGraph, FullGraph
from streamvlm.models.base import VisionTower


# Opset 23 has the Attention operator, which onnxruntime runs fused (faster on CPU than the
# MatMul-Softmax-MatMul of older opsets). TensorRT parsers older than that need 18.
DEFAULT_OPSET = 23


def export_onnx(tower: VisionTower, model_id: str, out: Path, image_size: int, say=None,
                opset: int = DEFAULT_OPSET) -> dict:
    """Export both graphs, check them against torch in onnxruntime, write onnx.json."""
    say = say or (lambda text: print(f"export: {text}", file=sys.stderr, flush=True))
    target = Path(out) / model_dir_name(model_id)
    target.mkdir(parents=True, exist_ok=True)
    dtype = next(tower.embed.parameters()).dtype
    if dtype != torch.float32:
        raise ValueError(f"export from a float32 model (got {dtype}); engines choose their own precision")
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 3, image_size, image_size, generator=g) * 2 - 1
    full, delta = FullGraph(tower).eval(), DeltaGraph(tower).eval()
    with torch.inference_mode():
        _, keys, values = full(pixels)
    patches = keys.shape[3]
    index = torch.arange(0, patches, 3)
    steps = [("full-frame graph", full, (pixels,), None, target / FULL, ["pixels"], ["features", "keys", "values"]),
             ("delta graph", delta, (pixels, index, keys, values),
              ({}, {0: torch.export.Dim("n", min=1, max=patches)}, {}, {}), target / DELTA,
              ["pixels", "index", "keys", "values"], ["features", "keys_new", "values_new"])]
    for step, (label, graph, inputs, shapes, path, names_in, names_out) in enumerate(steps, start=1):
        start = time.perf_counter()
        say(f"[{step}/3] exporting the {label} to {path} ...")
        with _quiet_exporter():
            torch.onnx.export(graph, inputs, str(path), dynamo=True, dynamic_shapes=shapes, opset_version=opset,
                              input_names=names_in, output_names=names_out, external_data=False,
                              verbose=False, optimize=True)
        say(f"[{step}/3] {label} exported in {time.perf_counter() - start:.1f} s")
    say("[3/3] checking both graphs against torch in onnxruntime ...")
    diffs = check_against_torch(target / FULL, target / DELTA, full, delta, pixels, keys, values)
    say(f"[3/3] max abs diff vs torch: full {diffs['full']:.2e}, delta {diffs['delta']:.2e}")
    info = {"model": model_id, "opset": opset, "image_size": image_size, "patches": patches, "layers": keys.shape[0],
            "heads": keys.shape[2], "head_dim": keys.shape[4],
            "files": {name: sha256(target / name) for name in (FULL, DELTA)},
            "max_abs_diff": diffs, "torch": torch.__version__}
    (target / INFO).write_text(json.dumps(info, indent=2) + "\n")
    return {"dir": str(target), **info}


def check_against_torch(full_path: Path, delta_path: Path, full: FullGraph, delta: DeltaGraph,
                        pixels: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> dict:
    """Largest |onnxruntime - torch| over every output: the full graph, and the delta graph
    at 1, a seventh, and all of the tokens."""
    from streamvlm.backends.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(full_path, delta_path, providers=["CPUExecutionProvider"])
    patches = keys.shape[3]
    with torch.inference_mode():
        worst_full = _max_diff(backend.full(pixels), full(pixels))
        worst_delta = 0.0
        g = torch.Generator().manual_seed(1)
        for n in (1, max(1, patches // 7), patches):
            index = torch.randperm(patches, generator=g)[:n].sort().values
            worst_delta = max(worst_delta, _max_diff(backend.delta(pixels, index, keys, values),
                                                     delta(pixels, index, keys, values)))
    return {"full": worst_full, "delta": worst_delta}


@contextlib.contextmanager
def _quiet_exporter():
    # The exporter and its graph optimizer log every rewrite at INFO and warn about optional
    # torchvision ops; none of it is actionable here.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _max_diff(a, b) -> float:
    return max(float(np.abs(x.numpy() - y.numpy()).max()) for x, y in zip(a, b))
