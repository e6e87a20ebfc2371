"""Exported vision graphs: ONNX export, TensorRT engine builds, their manifests."""
