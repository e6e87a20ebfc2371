"""`streamvlm export onnx | trt` and `streamvlm calib make`: argument parsing, then the work
in onnx_export / tensorrt_build / calibration / loading (imported only when run)."""

from __future__ import annotations

import json
from pathlib import Path


def add_parsers(commands) -> None:
    export = commands.add_parser("export", help="export the ViT: ONNX graphs, TensorRT engines")
    kinds = export.add_subparsers(required=True, metavar="FORMAT")
    onnx = kinds.add_parser("onnx", help="the full-frame and delta graphs as ONNX, checked against torch")
    onnx.add_argument("--model", required=True,
                      help="'tiny', an HF id or directory, or 'siglip-base' / 'siglip-so400m' (random towers)")
    onnx.add_argument("--out", type=Path, default=Path("engines"), help="engines directory (default engines/)")
    onnx.add_argument("--opset", type=int, default=23,
                      help="ONNX opset (default 23: fused attention in onnxruntime; 18 for older TensorRT)")
    onnx.set_defaults(run=_run_onnx)
    trt = kinds.add_parser("trt", help="a TensorRT engine from exported ONNX graphs (needs CUDA and tensorrt)")
    trt.add_argument("--onnx", type=Path, required=True, help="the directory `export onnx` wrote")
    trt.add_argument("--precision", choices=("fp16", "int8", "fp32"), default="fp16")
    trt.add_argument("--calib", type=Path, help="int8: calibration frames (`streamvlm calib make`)")
    trt.add_argument("--workspace-mb", type=int, default=2048, help="builder workspace limit")
    trt.set_defaults(run=_run_trt)
    calib = commands.add_parser("calib", help="INT8 calibration data")
    calib_kinds = calib.add_subparsers(required=True, metavar="ACTION")
    make = calib_kinds.add_parser("make", help="pick calibration frames from a bag")
    make.add_argument("bag", type=Path)
    make.add_argument("--topic", help="image topic (needed when the bag has several)")
    make.add_argument("--out", type=Path, default=Path("calibration"))
    make.add_argument("--count", type=int, default=256, help="frames to keep, spread over the bag")
    make.set_defaults(run=_run_calib)


def _run_onnx(args) -> int:
    from streamvlm.export.loading import load_tower
    from streamvlm.export.onnx_export import export_onnx

    tower, size, model_id, _ = load_tower(args.model)
    info = export_onnx(tower, model_id, args.out, size, opset=args.opset)
    print(json.dumps({"dir": info["dir"], "max_abs_diff": info["max_abs_diff"]}))
    return 0


def _run_trt(args) -> int:
    from streamvlm.export.tensorrt_build import build_engine

    manifest = build_engine(args.onnx, args.precision, args.calib, args.workspace_mb)
    print(json.dumps(manifest))
    return 0


def _run_calib(args) -> int:
    from streamvlm.export.calibration import make_calibration

    written = make_calibration(args.bag, args.out, args.count, args.topic)
    print(json.dumps({"frames": written, "out": str(args.out)}))
    return 0
