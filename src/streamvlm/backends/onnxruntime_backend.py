"""The exported graphs run by ONNX Runtime: CPU, or the CUDA / TensorRT execution providers
where the installed onnxruntime has them and a GPU is there to run them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from streamvlm.backends.base import GraphOutput, VisionBackend

# Tried in this order; the session reports which it really uses.
_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeBackend(VisionBackend):
    name = "onnxruntime"

    def __init__(self, full_path: Path, delta_path: Path, providers: list[str] | None = None,
                 threads: int = 0):
        import onnxruntime as ort

        for path in (full_path, delta_path):
            if not Path(path).is_file():
                raise FileNotFoundError(f"no ONNX graph at {path}: run `streamvlm export onnx` first")
        wanted = providers or [p for p in _PREFERRED if p in ort.get_available_providers()]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # onnxruntime's default counts physical cores, which is 1 on many 2-vCPU machines:
        # take as many threads as torch does, so that both backends get the same CPU.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        # Idle onnxruntime threads spin for a while after each run by default, taking the CPU
        # from the torch code that follows (the delta cache's change detection, the projector).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._full = ort.InferenceSession(str(full_path), options, providers=wanted)
        self._delta = ort.InferenceSession(str(delta_path), options, providers=wanted)
        # onnxruntime-gpu lists the CUDA and TensorRT providers even on a machine without a
        # GPU and quietly falls back to the CPU: what counts is what the session took.
        self.providers = self._full.get_providers()
        if providers and providers[0] not in self.providers:
            raise RuntimeError(f"onnxruntime could not use {providers[0]}; the session runs on {self.providers}")

    def full(self, pixels: torch.Tensor) -> GraphOutput:
        return _tensors(self._full.run(None, {"pixels": _array(pixels)}), pixels)

    def delta(self, pixels, index, keys, values) -> GraphOutput:
        feeds = {"pixels": _array(pixels), "index": _array(index), "keys": _array(keys), "values": _array(values)}
        return _tensors(self._delta.run(None, feeds), pixels)

    def describe(self) -> str:
        return f"onnxruntime ({', '.join(self.providers)})"


def _array(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _tensors(outputs: list[np.ndarray], like: torch.Tensor) -> GraphOutput:
    return tuple(torch.from_numpy(o).to(like.device) for o in outputs)
