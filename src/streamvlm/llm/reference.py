"""Full attention through transformers' own decoder and DynamicCache: the reference.

Every token ever fed stays in the cache and positions grow without bound. It is what the
streaming engine must equal while nothing is evicted, the baseline the benchmarks compare
against, and `language.kv_budget_tokens: 0` selects it.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from streamvlm.llm.kv_cache import FRAME, TEXT


class FullAttentionEngine:
    def __init__(self, decoder: nn.Module, lm_head: nn.Module):
        self.decoder = decoder
        self.lm_head = lm_head
        weight = decoder.get_input_embeddings().weight
        self.device, self.dtype = weight.device, weight.dtype
        self.cache = DynamicCache()
        self.length = 0  # tokens in the cache; also the next token's position
        self.frame_stamps: list[int] = []
        self.evicted_tokens = 0  # never evicts

    @property
    def room(self) -> int:
        return 1 << 62  # unbounded: memory is the limit

    def reset(self) -> None:
        self.cache = DynamicCache()
        self.length = 0
        self.frame_stamps = []

    def make_room(self, incoming: int, kind: str = TEXT, stamp_ns: int = 0) -> None:
        """Nothing is ever evicted."""

    @torch.inference_mode()
    def prefill(self, embeds: torch.Tensor, logits: bool = True, kind: str = TEXT, stamp_ns: int = 0,
                evict: bool = True, all_logits: bool = False, header: int = 0) -> torch.Tensor | None:
        """Append embeddings [T, D]; returns the last position's logits [V] ([T, V] with all_logits)."""
        embeds = embeds.to(self.device, self.dtype)[None]  # [1, T, D]
        steps = embeds.shape[1]
        positions = torch.arange(self.length, self.length + steps, device=self.device)[None]
        out = self.decoder(inputs_embeds=embeds, position_ids=positions, past_key_values=self.cache, use_cache=True)
        self.length += steps
        if kind == FRAME:
            self.frame_stamps.append(stamp_ns)
        if all_logits:
            return self.lm_head(out.last_hidden_state)[0].float()
        if not logits:
            return None
        return self.lm_head(out.last_hidden_state[:, -1])[0].float()  # [V]

    def prefill_tokens(self, token_ids: torch.Tensor, logits: bool = True, evict: bool = True,
                       all_logits: bool = False) -> torch.Tensor | None:
        embeds = self.decoder.get_input_embeddings()(token_ids.reshape(1, -1).to(self.device))[0]
        return self.prefill(embeds, logits, TEXT, all_logits=all_logits)
