"""What LanguageStage needs from an engine that holds one stream's context.

Two engines keep that promise: `StreamingEngine` (the fixed-budget cache with long-term
memory) and `FullAttentionEngine` (transformers' own decoder over every token ever fed,
the exact reference). The stage speaks only these verbs, so it never asks which engine it
holds.

An answer is one protocol over them:

    engine.reserve(n, recall)      # evict now, so nothing in this turn evicts; or CacheFull
    engine.recall(question)        # long-term memory brings matching frames back (optional)
    engine.prefill_text(prompt)    # the question, logits of its last token
    engine.decode_step(token) ...  # the answer
    engine.release()               # retrieved frames leave; the context is the stream again

Writes inside a reservation never evict: positions of what the question attends to stay
put until `release`. An alert's yes/no check is the same with `mark()` after `reserve` and
`rollback(mark)` before `release`: the question leaves no trace in the context.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from streamvlm.llm.kv_cache import CacheFull, CacheLayout
from streamvlm.llm.memory import FrameMemory, MemorySettings

__all__ = ["CacheFull", "ContextEngine"]


class ContextEngine(ABC):
    memory: FrameMemory | None  # long-term memory of evicted frames; None when off or never evicting

    @property
    @abstractmethod
    def length(self) -> int:
        """Tokens in the context now."""

    @property
    @abstractmethod
    def evicted_tokens(self) -> int:
        """Tokens evicted since the start (0 for full attention)."""

    @property
    @abstractmethod
    def frame_stamps(self) -> list[int]:
        """Stamps of the frames in the context now (retrieved ones included), oldest first."""

    @property
    @abstractmethod
    def frame_cameras(self) -> list[str]:
        """The camera of each frame in `frame_stamps` ("" : the only one)."""

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes of the keys and values held: the cache, and long-term memory."""

    @abstractmethod
    def reset(self) -> None:
        """A new stream: empty context and memory."""

    @abstractmethod
    def retune(self, layout: CacheLayout, memory: MemorySettings, prefill_chunk: int) -> None:
        """Take new run-time settings between turns (the budget itself is fixed)."""

    @abstractmethod
    def mark(self) -> object:
        """A point to come back to with `rollback` (after `reserve`, so that nothing is
        evicted before it)."""

    @abstractmethod
    def rollback(self, mark: object) -> None:
        """Take back everything appended since `mark`: the context is as it was then (an
        alert's yes/no question, asked and forgotten)."""

    @abstractmethod
    def prefill_frame(self, embeds: torch.Tensor, stamp_ns: int, header: int = 0, footer: int = 0,
                      layout: torch.Tensor | None = None, camera: str = "") -> None:
        """Append one frame's tokens [T, D]; `header` and `footer`: its first and last tokens
        (the text around a frame: time marker, image delimiters) that long-term memory always
        keeps and never matches a question against; `layout`: M-RoPE decoders' position rule
        of each token [T, 4] (`kv_cache.frame_layout`); `camera`: whose frame it is (the
        vision window is kept per camera)."""

    @abstractmethod
    def prefill_text(self, embeds: torch.Tensor, logits: bool = False) -> torch.Tensor | None:
        """Append text embeddings [T, D]; the last token's logits [V] when asked for."""

    @abstractmethod
    def reserve(self, tokens: int, recall: bool = False) -> None:
        """Make room now for `tokens` more (and, with `recall`, for what retrieval may bring
        back, room allowing); raises CacheFull, saying why, when they can never fit."""

    @abstractmethod
    def recall(self, question: torch.Tensor) -> list[int]:
        """Bring back the stored frames that best match the question's embeddings [T, D] into
        the reserved room; returns their stamps."""

    @abstractmethod
    def decode_step(self, token: int) -> torch.Tensor:
        """Append one generated token (inside the reservation); the next logits [V]."""

    @abstractmethod
    def release(self) -> None:
        """End the reservation; retrieved frames leave the context."""
