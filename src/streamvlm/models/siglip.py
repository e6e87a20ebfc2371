"""One SigLIP encoder layer as the pieces the delta cache and the exported graphs run.

SigLIP (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023) uses the
pre-norm ViT block (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021):

    x = x + out_proj(attention(q_proj, k_proj, v_proj of layer_norm1(x)))
    x = x + mlp(layer_norm2(x))

This file is the only place that reads a transformers SiglipEncoderLayer's module names.
The whole-layer methods below are pure tensor functions (nothing updated in place), so
the graphs built from them export to ONNX as they are.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, C] -> [B, H, T, d]."""
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, d] -> [B, T, C]."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def patch_embedding_size(embed: nn.Module) -> tuple[int, int]:
    """SigLIP's embeddings (a strided convolution over patches): the patch side p, and the
    counted FLOPs per token, the convolution being a linear map of each patch's 3*p*p pixels."""
    conv = embed.patch_embedding
    side = conv.kernel_size[0]
    return side, 2 * conv.in_channels * side * conv.kernel_size[1] * conv.out_channels


class LayerCache(NamedTuple):
    """What a full pass leaves for the caches to reuse (batch 1, P tokens)."""

    keys: torch.Tensor  # [1, H, P, d]
    values: torch.Tensor  # [1, H, P, d]
    attn_out: torch.Tensor  # [1, P, C] attention's output projection, before the residual
    mlp_out: torch.Tensor  # [1, P, C] the MLP's output, before the residual


class SiglipLayer(nn.Module):
    """A SigLIP encoder layer's modules, run piece by piece; `forward(x)` is the whole layer."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        attn = layer.self_attn
        self.norm1, self.norm2, self.mlp = layer.layer_norm1, layer.layer_norm2, layer.mlp
        self.q_proj, self.k_proj, self.v_proj = attn.q_proj, attn.k_proj, attn.v_proj
        self.out_proj = attn.out_proj
        self.heads, self.scale = attn.num_heads, attn.scale
        # Multiply-accumulates per token of each part, for the FLOP count.
        self._proj_macs = self.q_proj.in_features * self.q_proj.out_features  # q, k, v, out are all C x C
        self._mlp_macs = sum(fc.in_features * fc.out_features for fc in (layer.mlp.fc1, layer.mlp.fc2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, P, C] -> [B, P, C]."""
        return self.full(x)[0]

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """A projection [B, T, C] -> per head [B, H, T, d]."""
        return split_heads(x, self.heads)

    def attention(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Queries [B, H, n, d] over keys and values [B, H, P, d] -> the output projection [B, n, C]."""
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, keys, values, scale=self.scale)))

    def mlp_out(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP block without its residual: [B, n, C] -> [B, n, C]."""
        return self.mlp(self.norm2(x))

    def full(self, x: torch.Tensor) -> tuple[torch.Tensor, LayerCache]:
        """Every token x [B, P, C] -> the output [B, P, C] and what the caches keep."""
        h = self.norm1(x)
        keys, values = self.split(self.k_proj(h)), self.split(self.v_proj(h))
        attn_out = self.attention(self.split(self.q_proj(h)), keys, values)
        x = x + attn_out
        mlp_out = self.mlp_out(x)
        return x + mlp_out, LayerCache(keys, values, attn_out, mlp_out)

    def delta(self, x: torch.Tensor, index: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The n tokens x [1, n, C] at `index` [n] over every token's cached keys and values
        [1, H, P, d], their own new ones put in place -> output [1, n, C], and their new keys
        and values [1, H, n, d] (the caller writes them into its cache)."""
        h = self.norm1(x)
        k, v = self.split(self.k_proj(h)), self.split(self.v_proj(h))
        everyone = keys.index_copy(2, index, k), values.index_copy(2, index, v)  # [1, H, P, d] each
        x = x + self.attention(self.split(self.q_proj(h)), *everyone)
        return x + self.mlp_out(x), k, v

    def normed_keys(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """STC's first step: the normed input and every token's key, both [1, P, C]."""
        h = self.norm1(x)
        return h, self.k_proj(h)

    def partial(self, x: torch.Tensor, h: torch.Tensor, keys: torch.Tensor, index: torch.Tensor,
                ref: LayerCache) -> torch.Tensor:
        """STC-Cacher's layer between refreshes: x [1, P, C] with h = norm1(x) and every
        token's current key [1, P, C]; the tokens at `index` [n] get new queries, values,
        attention (over all current keys and the reference values with theirs in place) and
        MLP; the others take their current residual plus the reference's outputs."""
        h_sel = h.index_select(1, index)
        values = ref.values.index_copy(2, index, self.split(self.v_proj(h_sel)))
        attn_out = ref.attn_out.index_copy(1, index, self.attention(self.split(self.q_proj(h_sel)),
                                                                    self.split(keys), values))
        x = x + attn_out
        return x + ref.mlp_out.index_copy(1, index, self.mlp_out(x.index_select(1, index)))

    def flops(self, rows: int, keys: int, key_rows: int | None = None) -> int:
        """Counted matmul FLOPs of `rows` tokens attending to `keys` tokens; `key_rows` tokens
        get a key projection (default `rows`; STC projects every token's key)."""
        key_rows = rows if key_rows is None else key_rows
        width = self.q_proj.in_features
        projections = 2 * self._proj_macs * (3 * rows + key_rows)  # q, v, out per row; k per key row
        attention = 4 * rows * keys * width  # the scores and the weighted sum
        return projections + attention + 2 * rows * self._mlp_macs
