"""LanguageStage: visual tokens in, captions and answers out, over one streaming context.

The stream is one long chat (see `models.prompt`): frames are prefilled into the KV cache
as they arrive, a question closes the user turn, the answer is generated and stays in the
context, and the next frames open a new turn. Captions are questions the stage asks itself.
"""

from __future__ import annotations

import time

import torch

from streamvlm.config import PipelineConfig
from streamvlm.llm.engine import FullAttentionEngine
from streamvlm.models import VisionLanguageModel
from streamvlm.types import Answer, Caption, TokenBatch


class LanguageStage:
    def __init__(self, cfg: PipelineConfig, model: VisionLanguageModel):
        self.cfg = cfg
        self.model = model
        self.engine = FullAttentionEngine(model)
        self.frame_stamps: list[int] = []  # frames in the context, oldest first
        self._started = False
        self._turn_has_frames = False
        self._caption_anchor_ns: int | None = None  # last caption's stamp (first frame before any)
        self._caption_from_ns: int | None = None  # oldest frame not yet covered by a caption

    def reset(self) -> None:
        self.engine.reset()
        self.frame_stamps.clear()
        self._started = self._turn_has_frames = False
        self._caption_anchor_ns = self._caption_from_ns = None

    def reconfigure(self, cfg: PipelineConfig) -> None:
        """Take new run-time settings (the model section cannot change while running)."""
        if cfg.model != self.cfg.model:
            raise ValueError("the model settings are fixed while running; reconfigure the node to change them")
        self.cfg = cfg

    @property
    def context_tokens(self) -> int:
        """Tokens in the KV cache now."""
        return self.engine.length

    @property
    def newest_stamp_ns(self) -> int:
        return self.frame_stamps[-1] if self.frame_stamps else 0

    def ingest(self, batch: TokenBatch) -> None:
        """Prefill one frame's tokens into the context."""
        self.check_batch(batch)
        if self.frame_stamps and batch.stamp_ns <= self.frame_stamps[-1]:
            raise ValueError(f"frame stamp {batch.stamp_ns} is not after the newest {self.frame_stamps[-1]}")
        self._start()
        self.engine.prefill(batch.embeddings, logits=False)
        self.frame_stamps.append(batch.stamp_ns)
        self._turn_has_frames = True
        if self._caption_anchor_ns is None:
            self._caption_anchor_ns = batch.stamp_ns
        if self._caption_from_ns is None:
            self._caption_from_ns = batch.stamp_ns

    def ask(self, question: str, max_new_tokens: int | None = None) -> Answer:
        """Answer from everything in the context; the question and answer stay in it."""
        start = time.perf_counter()
        error = self.question_error(question)
        if not error and not self.frame_stamps:
            error = "no camera frames received yet: nothing to answer from"
        if error:
            return Answer(question, "", self.newest_stamp_ns, 0.0, success=False, error=error)
        limit = max_new_tokens or self.cfg.language.max_new_tokens
        self._start()
        logits = self._close_turn(question)
        generation = self.engine.generate_greedy(logits, limit)
        self._open_turn(generation.token_ids, generation.stopped)
        ids = [t for t in generation.token_ids if t not in self.model.stop_token_ids]
        text = self.model.tokenizer.decode(ids, skip_special_tokens=True).strip()
        latency = (time.perf_counter() - start) * 1e3
        return Answer(question, text, self.newest_stamp_ns, latency, list(self.frame_stamps),
                      token_ids=generation.token_ids, first_logits=generation.first_logits)

    def maybe_caption(self) -> Caption | None:
        """A caption when `caption_interval_s` of stream has passed since the last one."""
        interval = self.cfg.language.caption_interval_s
        if interval <= 0 or self._caption_from_ns is None:
            return None
        if self.newest_stamp_ns - self._caption_anchor_ns < interval * 1e9:
            return None
        start_ns = self._caption_from_ns
        answer = self.ask(self.cfg.language.caption_prompt, self.cfg.language.caption_max_new_tokens)
        self._caption_anchor_ns = answer.stamp_ns
        self._caption_from_ns = None  # the next frame starts the next caption's span
        return Caption(answer.text, start_ns, answer.stamp_ns, answer.latency_ms)

    def _start(self) -> None:
        if not self._started:
            self.engine.prefill_tokens(self.model.tokenize(self.model.prompt.stream_prefix), logits=False)
            self._started = True

    def _close_turn(self, question: str) -> torch.Tensor:
        prompt = self.model.prompt
        if self._turn_has_frames and self.model.frames_end_embedding is not None:
            self.engine.prefill(self.model.frames_end_embedding[None], logits=False)
        text = prompt.question_prefix + question + prompt.question_suffix
        return self.engine.prefill_tokens(self.model.tokenize(text))

    def _open_turn(self, generated: list[int], stopped: bool) -> None:
        # The last generated token is not in the cache yet. A final stop token is the
        # end-of-turn marker that the separator spells out anyway, so it is dropped.
        tail = generated[-1:] if generated and not stopped else []
        ids = tail + self.model.tokenize(self.model.prompt.turn_separator)[0].tolist()
        self.engine.prefill_tokens(torch.tensor(ids), logits=False)
        self._turn_has_frames = False

    def check_batch(self, batch: TokenBatch) -> None:
        """Raises ValueError when tokens cannot go into this model's context (stamps aside)."""
        hidden = self.model.decoder.config.hidden_size
        if batch.model and batch.model != self.model.name:
            raise ValueError(f"tokens from model {batch.model!r}, but this stage runs {self.model.name!r}")
        if batch.embeddings.ndim != 2 or batch.embeddings.shape[1] != hidden or batch.embeddings.shape[0] == 0:
            raise ValueError(f"tokens must be [N > 0, {hidden}], got {tuple(batch.embeddings.shape)}")
        if not bool(torch.isfinite(batch.embeddings).all()):
            raise ValueError("tokens hold NaN or Inf")

    def question_error(self, question: str) -> str:
        """Why a question is refused whatever the stream holds; "" when it is acceptable."""
        if not isinstance(question, str) or not question.strip():
            return "empty question"
        limit = self.cfg.language.max_question_chars
        if len(question) > limit:
            return f"question has {len(question)} characters; the limit is {limit}"
        return ""
