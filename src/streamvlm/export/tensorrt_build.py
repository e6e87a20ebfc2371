"""`streamvlm export trt`: TensorRT engines from the exported ONNX graphs (TensorRT 10 API).

One engine per graph. The delta graph gets an optimization profile over its token count
n (1, P/8, P); everything else has static shapes. INT8 engines are calibrated from frames
made by `streamvlm calib make` (entropy calibration), with FP16 allowed beside INT8 for
the layers that lose too much in INT8. The manifest (`backends.artifacts`) goes beside them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from streamvlm.backends.artifacts import DELTA, ENGINE, FULL, INFO, Manifest, require_tensorrt, sha256


def build_engine(onnx_dir: Path, precision: str, calib_dir: Path | None = None, workspace_mb: int = 2048) -> dict:
    trt = require_tensorrt()
    import torch

    onnx_dir = Path(onnx_dir)
    info = json.loads((onnx_dir / INFO).read_text())
    patches = info["patches"]
    if precision == "int8" and calib_dir is None:
        raise ValueError("int8 needs calibration frames: --calib DIR (make them with `streamvlm calib make BAG`)")
    logger = trt.Logger(trt.Logger.WARNING)
    profiles = {"index": [[1], [max(1, patches // 8)], [patches]]}
    for graph, name in (("full", FULL), ("delta", DELTA)):
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_dir / name)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {onnx_dir / name} (opset {info.get('opset')}): {errors}; "
                               f"an older TensorRT may need `streamvlm export onnx --opset 18`")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            from streamvlm.export.calibration import EntropyCalibrator

            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = EntropyCalibrator(trt, calib_dir, info, graph, onnx_dir / f"calib_{graph}.cache")
        if graph == "delta":
            profile = builder.create_optimization_profile()
            low, opt, high = profiles["index"]
            profile.set_shape("index", low, opt, high)
            config.add_optimization_profile(profile)
        start = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build the {graph} engine (see the log above)")
        (onnx_dir / ENGINE.format(graph=graph, precision=precision)).write_bytes(bytes(serialized))
        print(f"export: {graph} engine built in {time.perf_counter() - start:.0f} s", flush=True)
    manifest = Manifest(model=info["model"], onnx_sha256={n: sha256(onnx_dir / n) for n in (FULL, DELTA)},
                        tensorrt=trt.__version__, gpu=torch.cuda.get_device_name(), precision=precision,
                        profiles=profiles, built=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    manifest.write(onnx_dir)
    return manifest.__dict__
