"""Qwen2-VL / Qwen2.5-VL's ViT as the pieces the delta cache and the pruner run.

Qwen2-VL (Wang et al., "Qwen2-VL", arXiv 2409.12191) patchifies with a Conv3d over two
frames, rotates queries and keys with a 2-D RoPE (rows on one half of the rotary
frequencies, columns on the other) and merges each 2x2 block of patches into one LLM
token; Qwen2.5-VL (arXiv 2502.13923) swaps the norms for RMSNorm and the MLP for SwiGLU,
and attends within 8x8-patch windows except in a few full-attention layers.

transformers feeds the ViT its patches in 2x2-block order (the processor lays them out
that way) and Qwen2.5-VL's windowed layers in window order. Here the patches stay in
raster order, each with its own (row, column) rotary angles and, in a windowed layer, a
mask that lets it see its window only: attention does not depend on the order of its
tokens, so every token's output is the same, and the delta cache and pruner keep the
patch grid they work on for every family. `project` then gathers the 2x2 blocks.

A still frame is a video of one frame: transformers copies it to fill the Conv3d's two
time steps, which is the convolution with its two time slices summed; that is the 2-D
convolution `patch_embedding` here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from streamvlm.models.siglip import LayerCache, merge_heads, split_heads


class StillPatchEmbedding(nn.Module):
    """Qwen's Conv3d patch embedding for a still frame: [B, 3, H, W] -> [B, P, C] in raster order."""

    def __init__(self, conv3d: nn.Conv3d):
        super().__init__()
        weight = conv3d.weight.detach().sum(dim=2)  # [C, 3, p, p]: both time steps see the same frame
        side = weight.shape[-1]
        self.patch_embedding = nn.Conv2d(weight.shape[1], weight.shape[0], side, stride=side,
                                         bias=conv3d.bias is not None)
        self.patch_embedding.weight.data.copy_(weight)
        if conv3d.bias is not None:
            self.patch_embedding.bias.data.copy_(conv3d.bias.detach())
        self.patch_embedding.to(conv3d.weight.device, conv3d.weight.dtype)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.patch_embedding(pixels).flatten(2).transpose(1, 2)


def grid_rotary(inv_freq: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2-VL's vision RoPE for a rows x cols patch grid in raster order: cos, sin [P, d]
    (float32), d = 4 * len(inv_freq): [row angles | column angles] twice, as transformers'
    `Qwen2VLVisionRotaryEmbedding` lays them out."""
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    inv_freq = inv_freq.float().cpu()
    angles = torch.cat([r.reshape(-1, 1) * inv_freq, c.reshape(-1, 1) * inv_freq], dim=-1)  # [P, d/2]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def window_mask(rows: int, cols: int, window: int) -> torch.Tensor:
    """[P, P] bool: patch i may attend to patch j when both lie in the same window x window
    block of patches (Qwen2.5-VL's windows, counted from the grid's top-left corner)."""
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    block = (r // window * ((cols + window - 1) // window) + c // window).reshape(-1)
    return block[:, None] == block[None, :]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class QwenVisionLayer(nn.Module):
    """One Qwen2-VL / Qwen2.5-VL vision block over a fixed patch grid, with SiglipLayer's
    methods (the delta cache and the graphs call only these): keys are cached rotated."""

    def __init__(self, block: nn.Module, cos: torch.Tensor, sin: torch.Tensor, allowed: torch.Tensor | None):
        super().__init__()
        attn = block.attn
        self.norm1, self.norm2, self.mlp = block.norm1, block.norm2, block.mlp
        self.qkv_proj, self.out_proj = attn.qkv, attn.proj
        self.heads, self.scale = attn.num_heads, attn.scaling
        self.width = attn.qkv.in_features
        device = attn.qkv.weight.device
        self.register_buffer("cos", cos.to(device), persistent=False)  # [P, d] float32
        self.register_buffer("sin", sin.to(device), persistent=False)
        self.register_buffer("allowed", None if allowed is None else allowed.to(device), persistent=False)
        self._proj_macs = self.width * self.width
        self._mlp_macs = sum(m.in_features * m.out_features for m in block.mlp.modules() if isinstance(m, nn.Linear))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.full(x)[0]

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return split_heads(x, self.heads)

    def _project(self, h: torch.Tensor, part: int) -> torch.Tensor:
        """One of q (0), k (1), v (2) from the fused projection: [B, T, C]."""
        rows = slice(part * self.width, (part + 1) * self.width)
        bias = self.qkv_proj.bias[rows] if self.qkv_proj.bias is not None else None
        return F.linear(h, self.qkv_proj.weight[rows], bias)

    def _rope(self, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """x [B, H, T, d] for the patches at `index` (None: all) rotated in float32, as transformers does."""
        cos, sin = (self.cos, self.sin) if index is None else (self.cos[index], self.sin[index])
        y = x.float()
        return (y * cos + _rotate_half(y) * sin).to(x.dtype)

    def attention(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                  index: torch.Tensor | None = None) -> torch.Tensor:
        """Queries [B, H, n, d] of the patches at `index` (None: all) over every patch's keys
        and values [B, H, P, d] -> the output projection [B, n, C]."""
        mask = None
        if self.allowed is not None:
            mask = self.allowed if index is None else self.allowed[index]
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scale)
        return self.out_proj(merge_heads(out))

    def mlp_out(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm2(x))

    def full(self, x: torch.Tensor) -> tuple[torch.Tensor, LayerCache]:
        h = self.norm1(x)
        q, k, v = (self.split(t) for t in self.qkv_proj(h).chunk(3, dim=-1))
        q, keys = self._rope(q, None), self._rope(k, None)
        attn_out = self.attention(q, keys, v)
        x = x + attn_out
        mlp_out = self.mlp_out(x)
        return x + mlp_out, LayerCache(keys, v, attn_out, mlp_out)

    def delta(self, x: torch.Tensor, index: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.norm1(x)
        q, k, v = (self.split(t) for t in self.qkv_proj(h).chunk(3, dim=-1))
        q, k = self._rope(q, index), self._rope(k, index)
        everyone = keys.index_copy(2, index, k), values.index_copy(2, index, v)
        x = x + self.attention(q, *everyone, index=index)
        return x + self.mlp_out(x), k, v

    def normed_keys(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm1(x)
        return h, merge_heads(self._rope(self.split(self._project(h, 1)), None))

    def partial(self, x: torch.Tensor, h: torch.Tensor, keys: torch.Tensor, index: torch.Tensor,
                ref: LayerCache) -> torch.Tensor:
        h_sel = h.index_select(1, index)
        values = ref.values.index_copy(2, index, self.split(self._project(h_sel, 2)))
        q = self._rope(self.split(self._project(h_sel, 0)), index)
        attn_out = ref.attn_out.index_copy(1, index, self.attention(q, self.split(keys), values, index=index))
        x = x + attn_out
        return x + ref.mlp_out.index_copy(1, index, self.mlp_out(x.index_select(1, index)))

    def flops(self, rows: int, keys: int, key_rows: int | None = None) -> int:
        key_rows = rows if key_rows is None else key_rows
        projections = 2 * self._proj_macs * (3 * rows + key_rows)
        attention = 4 * rows * keys * self.width  # windowed layers counted as full: an upper bound
        return projections + attention + 2 * rows * self._mlp_macs
