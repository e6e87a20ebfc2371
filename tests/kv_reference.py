"""A deliberately plain reference for the streaming cache after eviction, built on transformers.

"Full attention over exactly the kept tokens at contiguous positions": every new run of
tokens goes through transformers' own decoder, with a DynamicCache assembled from the
kept tokens' keys and values rotated to positions 0..L-1. A kept token's keys and values
are the ones it got when it arrived (that is what any KV cache keeps: recomputing them
would need the evicted context), stored un-rotated so they can move. Nothing here shares
code with the engine: lists, `torch.cat`, transformers' RoPE and attention.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


class KeptTokensReference:
    """mrope: the decoder takes 3-D positions (Qwen2-VL); each token then comes with its
    layout row (offsets from its start, move to the next start; `llm.kv_cache`), and the
    kept tokens' positions are laid out afresh from their rows after every eviction."""

    def __init__(self, decoder, lm_head, mrope: bool = False):
        self.decoder = decoder
        self.lm_head = lm_head
        self.mrope = mrope
        layers = len(decoder.layers)
        self.keys: list[torch.Tensor | None] = [None] * layers  # [1, Hkv, L, d] before RoPE
        self.values: list[torch.Tensor | None] = [None] * layers
        self.rows = torch.zeros(0, 4, dtype=torch.long)  # mrope: the kept tokens' layout rows

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def _positions(self, start: int, end: int) -> torch.Tensor:
        """Positions of kept tokens start..end-1: [1, n], or [3, 1, n] for mrope."""
        if not self.mrope:
            return torch.arange(start, end)[None]
        moves = self.rows[:, 3]
        starts = torch.cumsum(moves, 0) - moves
        return (starts[:, None] + self.rows[:, :3]).T[:, None, start:end]

    def _rotate(self, keys: torch.Tensor, start: int, inverse: bool = False) -> torch.Tensor:
        probe = torch.zeros(1, 1, dtype=self.decoder.get_input_embeddings().weight.dtype)
        cos, sin = self.decoder.rotary_emb(probe, self._positions(start, start + keys.shape[2]))
        return apply_rotary_pos_emb(keys, keys, cos, -sin if inverse else sin)[1]

    @torch.inference_mode()
    def feed(self, embeds: torch.Tensor, layout: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings [T, D] after the kept tokens (mrope: with their layout [T, 4], None for
        text); returns logits [T, V]."""
        start, steps = self.length, embeds.shape[0]
        if self.mrope:
            new = torch.tensor([[0, 0, 0, 1]] * steps) if layout is None else layout.long()
            self.rows = torch.cat([self.rows, new])
        cache = DynamicCache()
        if start:
            for layer, (k, v) in enumerate(zip(self.keys, self.values)):
                cache.update(self._rotate(k, 0), v, layer)
        out = self.decoder(inputs_embeds=embeds[None], position_ids=self._positions(start, start + steps),
                           cache=cache, use_cache=True)
        for layer in range(len(self.keys)):
            new_k = cache.layers[layer].keys[:, :, start:]  # rotated at their positions by transformers
            new_v = cache.layers[layer].values[:, :, start:]
            new_k = self._rotate(new_k, start, inverse=True)
            self.keys[layer] = new_k if not start else torch.cat([self.keys[layer], new_k], dim=2)
            self.values[layer] = new_v if not start else torch.cat([self.values[layer], new_v], dim=2)
        return self.lm_head(out.last_hidden_state)[0].float()

    def evict(self, removed: list[tuple[int, int]]) -> None:
        """Drop slot ranges (start, length), numbered as before the eviction."""
        if not removed:
            return
        gone = {slot for start, n in removed for slot in range(start, start + n)}
        keep = torch.tensor([i for i in range(self.length) if i not in gone], dtype=torch.long)
        self.keys = [k.index_select(2, keep) for k in self.keys]
        self.values = [v.index_select(2, keep) for v in self.values]
        if self.mrope:
            self.rows = self.rows.index_select(0, keep)
