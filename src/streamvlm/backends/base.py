"""What the vision stage needs from a ViT backend: the two graphs of `graphs.py`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from streamvlm.fields import check, setting

BACKENDS = ("torch", "onnxruntime", "tensorrt")


@dataclass(frozen=True)
class BackendSettings:
    """`vision.backend.*`: what runs the ViT's graphs. Fixed while running (it loads engines)."""

    name: str = setting("torch", "what runs the ViT: torch, onnxruntime or tensorrt (the last two need "
                        "`streamvlm export`)", choices=BACKENDS, read_only=True)
    engines_dir: str = setting("engines", "where `streamvlm export` put the ONNX graphs and TensorRT engines",
                               read_only=True)
    torch_compile: bool = setting(False, "torch backend: compile the graphs with torch.compile (slow first frames)",
                                  read_only=True)
    trt_precision: str = setting("fp16", "tensorrt backend: which engine to load", choices=("fp16", "int8", "fp32"),
                                 read_only=True)

    def __post_init__(self):
        check(self)


# (features [1, P|n, F], keys [L, 1, H, P|n, d], values [L, 1, H, P|n, d])
GraphOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class VisionBackend(ABC):
    name: str

    @abstractmethod
    def full(self, pixels: torch.Tensor) -> GraphOutput:
        """pixels [1, 3, S, S] -> every token's features, and every layer's keys and values."""

    @abstractmethod
    def delta(self, pixels: torch.Tensor, index: torch.Tensor, keys: torch.Tensor,
              values: torch.Tensor) -> GraphOutput:
        """The n tokens at `index` [n] recomputed over the cached keys and values of all:
        their features [1, n, F] and their new keys and values [L, 1, H, n, d]."""

    def describe(self) -> str:
        """One line for logs and diagnostics: what runs, and where."""
        return self.name
