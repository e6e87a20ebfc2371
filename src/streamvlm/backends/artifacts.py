"""The files `streamvlm export` writes and the onnxruntime and TensorRT backends read.

Layout: `<engines_dir>/<model_dir_name(model)>/` holds the two ONNX graphs (FULL, DELTA),
`onnx.json` (INFO: the model, grid, each file's sha256, the measured error), and per
precision a TensorRT engine per graph (ENGINE) with its manifest (MANIFEST).

A TensorRT engine is only valid for the ONNX graph, TensorRT version and GPU it was built
with; loading it anywhere else fails obscurely or silently computes the wrong thing. The
manifest records those, and `check` refuses a mismatch with the command that rebuilds it.
Kept apart from `export` so that the backends never import the exporter.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

FULL, DELTA, INFO = "vision_full.onnx", "vision_delta.onnx", "onnx.json"
MANIFEST = "trt_{precision}.json"
ENGINE = "vision_{graph}.{precision}.engine"


def model_dir_name(model_id: str) -> str:
    """A directory name for a model id (an HF id's slash becomes '--')."""
    return model_id.strip("/").replace("/", "--").replace(":", "-")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def require_tensorrt():
    """The tensorrt module, when TensorRT and a CUDA GPU are both really there."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT needs a CUDA GPU and none is available here; use the onnxruntime or torch backend")
    try:
        import tensorrt
    except ImportError:
        raise RuntimeError("the tensorrt Python package is not installed (on a Jetson it comes with JetPack)") from None
    return tensorrt


class ManifestMismatch(RuntimeError):
    """An engine was built for another model, graph, TensorRT version, GPU or precision."""


@dataclass(frozen=True)
class Manifest:
    model: str
    onnx_sha256: dict[str, str]  # graph file name -> sha256 of the ONNX it was built from
    tensorrt: str
    gpu: str
    precision: str
    profiles: dict[str, list[list[int]]] = field(default_factory=dict)  # input -> [min, opt, max] shapes
    built: str = ""

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST.format(precision=self.precision)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path, precision: str) -> "Manifest":
        path = Path(folder) / MANIFEST.format(precision=precision)
        if not path.is_file():
            raise FileNotFoundError(f"no {precision} TensorRT engine manifest in {folder}: "
                                    f"{rebuild_command(folder, precision)}")
        return cls(**json.loads(path.read_text()))


def rebuild_command(folder: Path, precision: str) -> str:
    calib = " --calib calibration" if precision == "int8" else ""
    return f"rebuild it with `streamvlm export trt --onnx {folder} --precision {precision}{calib}`"


def check(manifest: Manifest, folder: Path, *, model: str, onnx_sha256: dict[str, str], tensorrt: str,
          gpu: str, precision: str) -> None:
    """Raise ManifestMismatch naming every field that differs from what is here now."""
    expected = {"model": model, "tensorrt": tensorrt, "gpu": gpu, "precision": precision}
    wrong = [f"{name}: engine built for {getattr(manifest, name)!r}, here {value!r}"
             for name, value in expected.items() if getattr(manifest, name) != value]
    for graph, digest in onnx_sha256.items():
        if manifest.onnx_sha256.get(graph) != digest:
            wrong.append(f"onnx_sha256 of {graph}: the ONNX graph changed since the engine was built")
    if wrong:
        raise ManifestMismatch(f"the TensorRT engine in {folder} does not match ({'; '.join(wrong)}); "
                               f"{rebuild_command(folder, precision)}")
