"""Exported vision graphs: ONNX export, TensorRT engine builds, INT8 calibration. The files'
layout and the engine manifest live in `backends.artifacts`, which the backends read."""
