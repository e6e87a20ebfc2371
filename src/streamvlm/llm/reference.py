"""Full attention through transformers' own decoder and DynamicCache: the reference.

Every token ever fed stays in the cache and positions grow without bound. It is what the
streaming engine must equal while nothing is evicted, the baseline the benchmarks compare
against, and `language.cache.budget_tokens: 0` selects it.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from streamvlm.llm.contract import ContextEngine
from streamvlm.llm.kv_cache import FRAME, TEXT, CacheLayout
from streamvlm.llm.memory import MemorySettings


class FullAttentionEngine(ContextEngine):
    def __init__(self, decoder: nn.Module, lm_head: nn.Module):
        self.decoder = decoder
        self.lm_head = lm_head
        weight = decoder.get_input_embeddings().weight
        self.device, self.dtype = weight.device, weight.dtype
        self.cache = DynamicCache()
        self._length = 0  # tokens in the cache
        self._next = 0  # the next token's position (M-RoPE frames move it by more than their length)
        self._frame_stamps: list[int] = []
        self._frame_cameras: list[str] = []
        self.memory = None  # nothing is evicted, so nothing is remembered

    @property
    def length(self) -> int:
        return self._length

    @property
    def evicted_tokens(self) -> int:
        return 0

    @property
    def frame_stamps(self) -> list[int]:
        return self._frame_stamps

    @property
    def frame_cameras(self) -> list[str]:
        return self._frame_cameras

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.cache.layers
                   for t in (layer.keys, layer.values) if t is not None)

    def reset(self) -> None:
        self.cache = DynamicCache()
        self._length = self._next = 0
        self._frame_stamps, self._frame_cameras = [], []

    def retune(self, layout: CacheLayout, memory: MemorySettings, prefill_chunk: int) -> None:
        """Nothing to tune: no layout, no memory, transformers prefills in one pass."""

    def prefill_frame(self, embeds: torch.Tensor, stamp_ns: int, header: int = 0, footer: int = 0,
                      layout: torch.Tensor | None = None, camera: str = "") -> None:
        self.prefill(embeds, logits=False, kind=FRAME, stamp_ns=stamp_ns, layout=layout)
        self._frame_cameras.append(camera)

    def prefill_text(self, embeds: torch.Tensor, logits: bool = False) -> torch.Tensor | None:
        return self.prefill(embeds, logits=logits)

    def reserve(self, tokens: int, recall: bool = False) -> None:
        """Always room: memory is the limit."""

    def recall(self, question: torch.Tensor) -> list[int]:
        return []  # every frame is still in the context

    def mark(self) -> tuple:
        return self._length, self._next, len(self._frame_stamps)

    def rollback(self, mark: tuple) -> None:
        length, self._next, frames = mark
        if self._length > length:  # a negative count removes that many, in every transformers version
            self.cache.crop(length - self._length)
        self._length = length
        del self._frame_stamps[frames:], self._frame_cameras[frames:]

    def decode_step(self, token: int) -> torch.Tensor:
        return self.prefill_tokens(torch.tensor([token]))

    def release(self) -> None:
        pass

    @torch.inference_mode()
    def prefill(self, embeds: torch.Tensor, logits: bool = True, kind: str = TEXT, stamp_ns: int = 0,
                all_logits: bool = False, layout: torch.Tensor | None = None) -> torch.Tensor | None:
        """Append embeddings [T, D]; returns the last position's logits [V] ([T, V] with all_logits).
        layout: M-RoPE positions of the tokens [T, 4] (offsets from their start and moves, as in
        `kv_cache`); None: one position a token."""
        embeds = embeds.to(self.device, self.dtype)[None]  # [1, T, D]
        steps = embeds.shape[1]
        if layout is None:
            positions = torch.arange(self._next, self._next + steps, device=self.device)[None]  # [1, T]
            self._next += steps
        else:
            rows = layout.to(self.device, torch.int64)
            starts = self._next + torch.cumsum(rows[:, 3], 0) - rows[:, 3]
            positions = (starts[:, None] + rows[:, :3]).T[:, None]  # [3, 1, T]
            self._next += int(rows[:, 3].sum())
        out = self.decoder(inputs_embeds=embeds, position_ids=positions, cache=self.cache, use_cache=True)
        self._length += steps
        if kind == FRAME:
            self._frame_stamps.append(stamp_ns)
        if all_logits:
            return self.lm_head(out.last_hidden_state)[0].float()
        if not logits:
            return None
        return self.lm_head(out.last_hidden_state[:, -1])[0].float()  # [V]

    def prefill_tokens(self, token_ids: torch.Tensor, logits: bool = True,
                       all_logits: bool = False) -> torch.Tensor | None:
        """Append text token ids [T] (or [1, T]); returns the last logits [V]."""
        embeds = self.decoder.get_input_embeddings()(token_ids.reshape(1, -1).to(self.device))[0]
        return self.prefill(embeds, logits, TEXT, all_logits=all_logits)
