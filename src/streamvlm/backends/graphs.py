"""The ViT as two pure functions of tensors, the unit every backend runs and exports.

- `FullGraph`: pixels [1, 3, S, S] -> features [1, P, F] (the tower's feature layers,
  concatenated on channels), and every layer's keys and values [L, 1, H, P, d]: what the
  delta cache keeps.
- `DeltaGraph`: pixels, the indices of the n dynamic patches [n], and the cached keys and
  values -> the n tokens' features [1, n, F] and their new keys and values [L, 1, H, n, d].
  Each layer's attention sees every token: the cached keys and values, with the n tokens'
  new ones put in their place. n varies from frame to frame (a dynamic axis on export).

The layer body is the tower's own (`models.siglip.SiglipLayer.full` / `.delta`). Nothing
is updated in place, so the graphs export to ONNX as they are; the caller scatters the new
keys and values into its cache.
"""

from __future__ import annotations

import torch
from torch import nn

from streamvlm.models.base import VisionTower


class _Graph(nn.Module):
    def __init__(self, tower: VisionTower):
        super().__init__()
        self.embed = tower.embed
        self.layers = nn.ModuleList(tower.layers)
        self.feature_layers = tuple(tower.feature_layers)


class FullGraph(_Graph):
    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.embed(pixels)
        kept = {0: x} if 0 in self.feature_layers else {}
        keys, values = [], []
        for index, layer in enumerate(self.layers, start=1):
            x, cache = layer.full(x)
            keys.append(cache.keys)  # [1, H, P, d]
            values.append(cache.values)
            if index in self.feature_layers:
                kept[index] = x
        features = torch.cat([kept[i] for i in self.feature_layers], dim=-1)
        return features, torch.stack(keys), torch.stack(values)


class DeltaGraph(_Graph):
    def forward(self, pixels: torch.Tensor, index: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.embed(pixels).index_select(1, index)  # [1, n, C]
        kept = {0: x} if 0 in self.feature_layers else {}
        new_keys, new_values = [], []
        for layer_index, layer in enumerate(self.layers):
            x, k, v = layer.delta(x, index, keys[layer_index], values[layer_index])  # k, v [1, H, n, d]
            new_keys.append(k)
            new_values.append(v)
            if layer_index + 1 in self.feature_layers:
                kept[layer_index + 1] = x
        features = torch.cat([kept[i] for i in self.feature_layers], dim=-1)
        return features, torch.stack(new_keys), torch.stack(new_values)
