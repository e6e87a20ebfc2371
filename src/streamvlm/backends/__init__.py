"""Vision backends behind one interface (`base.VisionBackend`): torch, onnxruntime, tensorrt.

All run the same two graphs (`graphs.py`). torch runs them from the model's modules;
onnxruntime and tensorrt run files made by `streamvlm export onnx` / `export trt` under
`<engines_dir>/<model>/`.
"""

from __future__ import annotations

from pathlib import Path

from streamvlm.backends.base import BACKENDS, BackendSettings, VisionBackend
from streamvlm.models.base import VisionTower

__all__ = ["BACKENDS", "BackendSettings", "VisionBackend", "make_backend"]


def make_backend(settings: BackendSettings, tower: VisionTower, model_id: str) -> VisionBackend:
    name, engines_dir, precision = settings.name, settings.engines_dir, settings.trt_precision
    if name == "torch":
        from streamvlm.backends.torch_backend import TorchBackend

        return TorchBackend(tower, compile=settings.torch_compile)
    from streamvlm.backends.artifacts import DELTA, FULL, model_dir_name

    folder = Path(engines_dir) / model_dir_name(model_id)
    if name == "onnxruntime":
        from streamvlm.backends.onnxruntime_backend import OnnxRuntimeBackend

        _check_onnx_info(folder, model_id)
        return OnnxRuntimeBackend(folder / FULL, folder / DELTA)
    if name == "tensorrt":
        from streamvlm.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(folder, model_id, precision)
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")


def _check_onnx_info(folder: Path, model_id: str) -> None:
    import json

    from streamvlm.backends.artifacts import INFO

    info_path = folder / INFO
    if not info_path.is_file():
        raise FileNotFoundError(f"no exported graphs in {folder}: run `streamvlm export onnx --model {model_id} "
                                f"--out {folder.parent}`")
    info = json.loads(info_path.read_text())
    if info.get("model") != model_id:
        raise ValueError(f"{folder} holds graphs of {info.get('model')!r}, not {model_id!r}: run "
                         f"`streamvlm export onnx --model {model_id} --out {folder.parent}`")
