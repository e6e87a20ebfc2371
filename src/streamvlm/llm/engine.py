"""Prefill and greedy decoding over the model's decoder with a plain, growing KV cache.

This is full attention: every token ever fed stays in the cache. It is the reference
that the fixed-budget streaming cache, pruning and eviction are measured against, and it
must equal the model's own offline forward over the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from streamvlm.models import VisionLanguageModel


@dataclass
class Generation:
    token_ids: list[int]  # generated tokens, a final stop token included
    first_logits: torch.Tensor  # [V] logits that chose the first token
    stopped: bool  # ended on a stop token (else on the length limit)


class FullAttentionEngine:
    def __init__(self, model: VisionLanguageModel):
        self.model = model
        self.cache = DynamicCache()
        self.length = 0  # tokens in the cache; also the next token's position

    def reset(self) -> None:
        self.cache = DynamicCache()
        self.length = 0

    @torch.inference_mode()
    def prefill(self, embeds: torch.Tensor, logits: bool = True) -> torch.Tensor | None:
        """Append embeddings [T, D] to the context; returns the last position's logits [V].

        With `logits=False` (frames, turn separators) the LM head is skipped: a hidden x
        vocabulary matmul per call that nothing reads.
        """
        embeds = embeds.to(self.model.device, self.model.dtype)[None]  # [1, T, D]
        steps = embeds.shape[1]
        positions = torch.arange(self.length, self.length + steps, device=self.model.device)[None]
        out = self.model.decoder(
            inputs_embeds=embeds, position_ids=positions, past_key_values=self.cache, use_cache=True
        )
        self.length += steps
        if not logits:
            return None
        return self.model.lm_head(out.last_hidden_state[:, -1])[0].float()  # [V]

    def prefill_tokens(self, token_ids: torch.Tensor, logits: bool = True) -> torch.Tensor | None:
        """Append token ids [T] (or [1, T]) to the context; returns the last logits [V]."""
        return self.prefill(self.model.embed_tokens(token_ids.reshape(1, -1))[0], logits)

    def generate_greedy(self, logits: torch.Tensor, max_new_tokens: int) -> Generation:
        """Greedy decoding from `logits` (the prompt's last logits).

        The chosen tokens are fed back except the last one, as in HF generate: the cache
        then holds everything up to, not including, the final token.
        """
        stops = self.model.stop_token_ids
        first = logits
        tokens: list[int] = []
        for step in range(max_new_tokens):
            token = int(torch.argmax(logits))
            tokens.append(token)
            if token in stops or step == max_new_tokens - 1:
                break
            logits = self.prefill_tokens(torch.tensor([token]))
        return Generation(tokens, first, bool(tokens) and tokens[-1] in stops)
