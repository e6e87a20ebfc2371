"""What the vision stage needs from a ViT backend: the two graphs of `graphs.py`."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

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
