"""The graphs as TensorRT engines (FP16, or INT8 on Orin), run on CUDA tensors.

Loading checks the manifest first: an engine built for another model, ONNX graph,
TensorRT version, GPU or precision is refused with the command that rebuilds it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from streamvlm.backends import artifacts
from streamvlm.backends.artifacts import DELTA, FULL, require_tensorrt, sha256
from streamvlm.backends.base import GraphOutput, VisionBackend

_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "INT64": torch.int64, "INT32": torch.int32}


class TensorRTBackend(VisionBackend):
    name = "tensorrt"

    def __init__(self, folder: Path, model_id: str, precision: str = "fp16"):
        trt = require_tensorrt()
        folder = Path(folder)
        manifest = artifacts.Manifest.read(folder, precision)
        present = {n: sha256(folder / n) for n in (FULL, DELTA) if (folder / n).is_file()}
        artifacts.check(manifest, folder, model=model_id, onnx_sha256=present, tensorrt=trt.__version__,
                        gpu=torch.cuda.get_device_name(), precision=precision)
        self.precision = precision
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._trt = trt
        self._engines, self._contexts = {}, {}
        for graph in ("full", "delta"):
            path = folder / artifacts.ENGINE.format(graph=graph, precision=precision)
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise RuntimeError(f"TensorRT could not load {path}; {artifacts.rebuild_command(folder, precision)}")
            self._engines[graph] = engine
            self._contexts[graph] = engine.create_execution_context()
        self._stream = torch.cuda.Stream()

    def full(self, pixels: torch.Tensor) -> GraphOutput:
        return self._run("full", {"pixels": pixels}, ("features", "keys", "values"))

    def delta(self, pixels, index, keys, values) -> GraphOutput:
        return self._run("delta", {"pixels": pixels, "index": index, "keys": keys, "values": values},
                         ("features", "keys_new", "values_new"))

    def _run(self, graph: str, inputs: dict[str, torch.Tensor], outputs: tuple[str, ...]) -> GraphOutput:
        engine, context = self._engines[graph], self._contexts[graph]
        held = []  # keep the converted inputs alive until the stream is done
        for name, tensor in inputs.items():
            want = _DTYPES[engine.get_tensor_dtype(name).name]
            tensor = tensor.to("cuda", want).contiguous()
            held.append(tensor)
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        results = []
        for name in outputs:
            shape = tuple(context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=_DTYPES[engine.get_tensor_dtype(name).name], device="cuda")
            context.set_tensor_address(name, out.data_ptr())
            results.append(out)
        if not context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run the {graph} engine")
        self._stream.synchronize()
        like = next(iter(inputs.values()))
        return tuple(r.to(like.dtype) if r.is_floating_point() else r for r in results)

    def describe(self) -> str:
        return f"tensorrt ({self.precision}, {torch.cuda.get_device_name()})"
