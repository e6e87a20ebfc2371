"""The graphs run by PyTorch itself, in the tower's dtype (float32, bfloat16, float16)."""

from __future__ import annotations

import torch

from streamvlm.backends.base import GraphOutput, VisionBackend
from streamvlm.backends.graphs import DeltaGraph, FullGraph
from streamvlm.models.base import VisionTower


class TorchBackend(VisionBackend):
    name = "torch"

    def __init__(self, tower: VisionTower, compile: bool = False):
        self._full, self._delta = FullGraph(tower).eval(), DeltaGraph(tower).eval()
        if compile:
            # n changes every frame: mark it dynamic up front instead of recompiling per count.
            self._full = torch.compile(self._full)
            self._delta = torch.compile(self._delta, dynamic=True)
        self.compiled = compile

    @torch.inference_mode()
    def full(self, pixels: torch.Tensor) -> GraphOutput:
        return self._full(pixels)

    @torch.inference_mode()
    def delta(self, pixels, index, keys, values) -> GraphOutput:
        return self._delta(pixels, index, keys, values)

    def describe(self) -> str:
        return "torch" + (" (compiled)" if self.compiled else "")
