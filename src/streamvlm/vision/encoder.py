"""The vision transformer run as its split parts: patch embedding, then the layers.

Running the layers ourselves (instead of the HF module's forward) is what lets the delta
cache and the export backends replace single layers or run them on a subset of tokens.
"""

from __future__ import annotations

import torch

from streamvlm.models.base import VisionTower


class VisionEncoder:
    def __init__(self, tower: VisionTower):
        self.tower = tower
        self._wanted = frozenset(tower.feature_layers)

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, H, W] -> features [B, P, C * len(feature_layers)]."""
        hidden = self.tower.embed(pixels)  # [B, P, C]
        kept = {0: hidden} if 0 in self._wanted else {}
        for index, layer in enumerate(self.tower.layers, start=1):
            hidden = layer(hidden)
            if index in self._wanted:
                kept[index] = hidden
        return torch.cat([kept[i] for i in self.tower.feature_layers], dim=-1)
