"""The decoder's pieces as the streaming engine runs them, independent of the model family.

The engine (`llm/engine.py`) owns attention and the KV cache; everything else in a layer
(norms, projections, per-head q/k norms, MLP, residuals) and the rotary table comes from
here. `LlamaStyleDecoder` covers the pre-norm Llama-family decoders whose transformers
modules share names: Qwen2 (LLaVA-OneVision), Llama (SmolLM2, SmolVLM) and Qwen3 (per-head
q/k RMSNorm before RoPE). A family with other module names or position scheme (Qwen2-VL's
M-RoPE) gets its own `LanguageDecoder` beside it: `MRopeDecoder` (Qwen2-VL) differs only in
its positions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

# transformers' model_type of the decoders `LlamaStyleDecoder` runs.
LLAMA_STYLE = ("llama", "qwen2", "qwen3")
# ...and of those `MRopeDecoder` runs: Qwen2 layers with 3-D (time, row, column) positions.
MROPE_STYLE = ("qwen2_vl_text", "qwen2_5_vl_text")


class DecoderLayer(ABC):
    """One layer, split around attention: x [1, T, D] in, [1, T, D] out."""

    @abstractmethod
    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pre-attention norm and projections: q [T, Hq, d], k [T, Hkv, d], v [T, Hkv, d], before RoPE."""

    @abstractmethod
    def attention_out(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """The residual x [1, T, D] plus the output projection of attention [1, T, Hq * d]."""

    @abstractmethod
    def mlp_block(self, x: torch.Tensor) -> torch.Tensor:
        """Post-attention norm, MLP and residual: [1, T, D] -> [1, T, D]."""


class LanguageDecoder(ABC):
    """The decoder without its head: embeddings, layers, rotary table and final norm."""

    layers: tuple[DecoderLayer, ...]
    q_heads: int
    kv_heads: int
    head_dim: int
    scaling: float  # the attention's softmax scale
    dtype: torch.dtype
    device: torch.device
    # 1: a token's position is one index (its slot); 3: (time, row, column), M-RoPE.
    position_axes: int = 1

    @abstractmethod
    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables for positions [T] (or [3, T] with M-RoPE): cos, sin [T, head_dim] in the
        model's dtype."""

    @abstractmethod
    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The norm after the last layer: [1, T, D] -> [1, T, D]."""

    @abstractmethod
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [..., T] -> embeddings [..., T, D]."""


def language_decoder(decoder: nn.Module | LanguageDecoder) -> LanguageDecoder:
    """`decoder` itself if it is a LanguageDecoder, else a transformers decoder as a Llama-style one."""
    return decoder if isinstance(decoder, LanguageDecoder) else LlamaStyleDecoder(decoder)


class LlamaStyleLayer(DecoderLayer):
    def __init__(self, layer: nn.Module, q_heads: int, kv_heads: int, head_dim: int):
        self.norm1, self.norm2 = layer.input_layernorm, layer.post_attention_layernorm
        attn = layer.self_attn
        self.q_proj, self.k_proj, self.v_proj = attn.q_proj, attn.k_proj, attn.v_proj
        self.o_proj = attn.o_proj
        # Qwen3 RMS-normalizes each head of q and k before RoPE; Llama and Qwen2 have no such norm.
        self.q_norm, self.k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        self.mlp = layer.mlp
        self.shape_q, self.shape_kv = (q_heads, head_dim), (kv_heads, head_dim)

    def qkv(self, x):
        h = self.norm1(x)
        steps = x.shape[1]
        q = self.q_proj(h).view(steps, *self.shape_q)
        k = self.k_proj(h).view(steps, *self.shape_kv)
        v = self.v_proj(h).view(steps, *self.shape_kv)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def attention_out(self, x, attn):
        return x + self.o_proj(attn)

    def mlp_block(self, x):
        return x + self.mlp(self.norm2(x))


class LlamaStyleDecoder(LanguageDecoder):
    """A transformers Llama / Qwen2 / Qwen3 decoder (the `*Model`, without the LM head)."""

    def __init__(self, decoder: nn.Module):
        config = decoder.config
        check_supported(config, mrope=self.position_axes == 3)
        self._decoder = decoder
        attn = decoder.layers[0].self_attn
        self.q_heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        self.layers = tuple(LlamaStyleLayer(layer, self.q_heads, self.kv_heads, self.head_dim)
                            for layer in decoder.layers)
        weight = decoder.get_input_embeddings().weight
        self.dtype, self.device = weight.dtype, weight.device

    def rotary(self, positions):
        # The model's own rotary module (with its scaling rule); it reads only dtype and device of x.
        probe = torch.zeros(1, positions.shape[-1], 1, dtype=self.dtype, device=self.device)
        cos, sin = self._decoder.rotary_emb(probe, positions[..., None, :])  # [T] -> [1, T]; [3, T] -> [3, 1, T]
        return cos[0], sin[0]

    def final_norm(self, x):
        return self._decoder.norm(x)

    def embed(self, ids):
        return self._decoder.get_input_embeddings()(ids)


class MRopeDecoder(LlamaStyleDecoder):
    """Qwen2-VL's and Qwen2.5-VL's text model: Qwen2 layers, M-RoPE positions (time, row,
    column) whose rotary table the model's own module recomposes from three axes."""

    position_axes = 3


def check_supported(config, mrope: bool = False) -> None:
    """Refuse what the Llama-style pieces and the engine cannot run; `mrope`: the decoder is
    run with 3-D positions (MRopeDecoder)."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if not mrope and "mrope_section" in rope:
        raise NotImplementedError("an M-RoPE decoder (Qwen2-VL) runs only with 3-D positions: load it through "
                                  "its vision-language model's adapter")
    kind = getattr(config, "model_type", None)
    supported = MROPE_STYLE if mrope else LLAMA_STYLE
    if kind not in supported:
        raise NotImplementedError(f"decoder type {kind!r} has no adapter; supported: {', '.join(supported)}")
    if getattr(config, "use_sliding_window", False):
        raise NotImplementedError("sliding-window attention layers are not supported by the streaming engine")
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        raise NotImplementedError(f"layer types {sorted(kinds)} are not supported; only full attention")
