"""How long-term memory holds a frame's keys and values: as they are, or quantized.

- int8: symmetric, one float16 scale per token and head (absmax / 127).
- int4: asymmetric, per token and head in groups of `INT4_GROUP` channels along head_dim,
  each with a float16 scale and minimum, two 4-bit codes packed in a byte. Group-wise
  4-bit KV follows KIVI (arXiv 2402.02750) and StreamingTOM (github.com/YIGE24/StreamingTOM),
  which keeps its long-term memory this way. Groups run along head_dim, not across tokens
  as KIVI does for keys, because memory compresses a frame by dropping tokens: each kept
  token must be readable on its own. A group of 32 float32 channels (128 bytes) becomes
  16 bytes of codes and 4 of scale and minimum: 6.4x smaller; int8's is 3.9x at head_dim 64.
Memory dequantizes only what it reads: one layer's content keys at a time to score a
question, the retrieved frames' keys and values to answer it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

STORE_DTYPES = ("int4", "int8", "float16", "bfloat16", "float32")
INT4_GROUP = 32


class Stored(NamedTuple):
    """Rows of keys or values [..., head_dim] in a store dtype (memory keeps them token-major:
    [tokens, layers, kv_heads, ...])."""

    data: torch.Tensor  # float: the values; int8: codes; int4: uint8, two codes a byte [..., head_dim / 2]
    scale: torch.Tensor | None = None  # int8: [..., 1]; int4: [..., groups, 1] (float16)
    low: torch.Tensor | None = None  # int4: each group's minimum [..., groups, 1] (float16)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self if t is not None)

    def map(self, fn) -> Stored:
        """The same cut (`fn`: index, move, permute of the leading dims) of every part."""
        return Stored(*(None if t is None else fn(t) for t in self))

    def dequantize(self, device: torch.device | str) -> torch.Tensor:
        """Float32 on `device` (the parts are moved first, still compact)."""
        device = torch.device(device)
        # Without waiting only towards an accelerator (its stream orders the copy before use);
        # towards the host a copy must be complete before the CPU reads it.
        data = self.data.to(device, non_blocking=device.type == "cuda")
        if self.scale is None:
            return data.float()
        scale = self.scale.to(device).float()
        if self.low is None:
            return data.float() * scale
        codes = torch.stack((data & 15, data >> 4), dim=-1).flatten(-2)  # unpack: low nibble first
        groups = codes.float().unflatten(-1, (scale.shape[-2], -1))
        return (groups * scale + self.low.to(device).float()).flatten(-2)


def store(x: torch.Tensor, dtype: str) -> Stored:
    """x [..., head_dim] -> its parts in `dtype` (new tensors: the input may be a view of
    the cache, which will be overwritten)."""
    if dtype == "int8":
        return _int8(x)
    if dtype == "int4":
        return _int4(x)
    if dtype in STORE_DTYPES:
        return Stored(x.to(getattr(torch, dtype), copy=True))
    raise ValueError(f"unknown store dtype {dtype!r}; choose from {', '.join(STORE_DTYPES)}")


def _int8(x: torch.Tensor) -> Stored:
    scale = (x.float().abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / 127).to(torch.float16)
    return Stored(torch.round(x.float() / scale.float()).clamp(-127, 127).to(torch.int8), scale)


def _int4(x: torch.Tensor) -> Stored:
    dim = x.shape[-1]
    group = math.gcd(INT4_GROUP, dim)
    if group < 2:
        raise ValueError(f"int4 memory needs an even head_dim, not {dim}")
    groups = x.float().unflatten(-1, (dim // group, group))
    low = groups.amin(dim=-1, keepdim=True).to(torch.float16)
    # Codes are taken against the float16 scale and minimum that reading will use.
    scale = ((groups.amax(dim=-1, keepdim=True) - low.float()) / 15).clamp_min(1e-8).to(torch.float16)
    codes = torch.round((groups - low.float()) / scale.float()).clamp(0, 15).to(torch.uint8).flatten(-2)
    return Stored(codes[..., 0::2] | (codes[..., 1::2] << 4), scale, low)
