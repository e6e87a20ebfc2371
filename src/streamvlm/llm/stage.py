"""LanguageStage: visual tokens in, captions and answers out, over one streaming context.

The stream is one long chat (see `models.prompt`): frames are prefilled into the KV cache
as they arrive, a question closes the user turn, the answer is generated and stays in the
context, and the next frames open a new turn. Captions are questions the stage asks itself.
"""

from __future__ import annotations

import heapq
import time

import torch

from streamvlm.config import LanguageConfig, PipelineConfig
from streamvlm.llm.decoding import Sampling, generate
from streamvlm.llm.engine import StreamingEngine
from streamvlm.llm.kv_cache import FRAME, CacheLayout
from streamvlm.llm.memory import FrameMemory, MemorySettings
from streamvlm.llm.reference import FullAttentionEngine
from streamvlm.models import VisionLanguageModel
from streamvlm.timeline import Timeline
from streamvlm.types import Answer, Caption, TokenBatch


def cache_layout(cfg: LanguageConfig) -> CacheLayout:
    return CacheLayout(cfg.kv_budget_tokens, cfg.sink_tokens, cfg.text_sink_tokens, cfg.text_window_tokens,
                       cfg.vision_window_s, cfg.vision_window_frames)


def sampling(cfg: LanguageConfig) -> Sampling:
    return Sampling(cfg.temperature, cfg.top_p, cfg.repetition_penalty, cfg.seed)


def memory_settings(cfg: LanguageConfig) -> MemorySettings:
    return MemorySettings(cfg.memory_max_frames, round(cfg.memory_max_mb * 2**20), cfg.memory_keep_ratio,
                          cfg.memory_top_k, cfg.memory_dtype)


def make_engine(cfg: LanguageConfig, model: VisionLanguageModel) -> StreamingEngine | FullAttentionEngine:
    """The streaming engine at the configured budget, with long-term memory when it is on,
    or the full-attention reference (which never evicts) at budget 0."""
    if cfg.kv_budget_tokens == 0:
        return FullAttentionEngine(model.decoder, model.lm_head)
    engine = StreamingEngine(model.decoder, model.lm_head, cache_layout(cfg), cfg.prefill_chunk_tokens)
    settings = memory_settings(cfg)
    if settings.enabled:
        engine.attach_memory(FrameMemory(settings, engine.device))
    return engine


class LanguageStage:
    def __init__(self, cfg: PipelineConfig, model: VisionLanguageModel):
        self.cfg = cfg
        self.model = model
        self.engine = make_engine(cfg.language, model)
        self.timeline = Timeline(cfg.stream)  # applied by whoever receives the tokens (worker, pipeline)
        self._newest_ns: int | None = None  # newest frame ingested (it may have left the cache since)
        self._first_ns: int | None = None  # the stream's first frame: time markers count from it
        self._started = False
        self._turn_has_frames = False
        self._caption_anchor_ns: int | None = None  # last caption's stamp (first frame before any)
        self._caption_from_ns: int | None = None  # oldest frame not yet covered by a caption

    def reset(self) -> None:
        self.engine.reset()
        self._newest_ns = self._first_ns = None
        self._started = self._turn_has_frames = False
        self._caption_anchor_ns = self._caption_from_ns = None

    def reconfigure(self, cfg: PipelineConfig) -> None:
        """Take new run-time settings (the model section cannot change while running)."""
        if cfg.model != self.cfg.model:
            raise ValueError("the model settings are fixed while running; reconfigure the node to change them")
        if cfg.language.kv_budget_tokens != self.cfg.language.kv_budget_tokens:
            raise ValueError("language.kv_budget_tokens sizes the preallocated cache; it is fixed while running")
        layout = cache_layout(cfg.language) if cfg.language.kv_budget_tokens else None  # validates the sizes
        memory = memory_settings(cfg.language)
        if isinstance(self.engine, StreamingEngine):
            self.engine.cache.policy.layout = layout
            self.engine.prefill_chunk = cfg.language.prefill_chunk_tokens
            if not memory.enabled:
                self.engine.attach_memory(None)
            elif self.engine.memory is None:
                self.engine.attach_memory(FrameMemory(memory, self.engine.device))
            elif memory != self.engine.memory.settings:
                self.engine.memory.settings = memory  # new limits apply now, compression to new frames
                self.engine.memory.enforce_budget()
                self.engine.attach_memory(self.engine.memory)
        self.timeline.cfg = cfg.stream
        self.cfg = cfg

    @property
    def context_tokens(self) -> int:
        """Tokens in the KV cache now."""
        return self.engine.length

    @property
    def evicted_tokens(self) -> int:
        """Tokens evicted from the KV cache since the start (0 for full attention)."""
        return self.engine.evicted_tokens

    @property
    def frame_stamps(self) -> list[int]:
        """Stamps of the frames in the context now, oldest first."""
        return list(self.engine.frame_stamps)

    @property
    def memory(self) -> FrameMemory | None:
        """Long-term memory of the frames that left the context (None when off)."""
        return getattr(self.engine, "memory", None)

    @property
    def has_frames(self) -> bool:
        """Whether any frame was ingested since the start or the last reset."""
        return self._newest_ns is not None

    @property
    def newest_stamp_ns(self) -> int:
        return self._newest_ns or 0

    def ingest(self, batch: TokenBatch) -> None:
        """Prefill one frame's tokens into the context."""
        self.check_batch(batch)
        if self._newest_ns is not None and batch.stamp_ns <= self._newest_ns:
            raise ValueError(f"frame stamp {batch.stamp_ns} is not after the newest {self._newest_ns}")
        self._start()
        # A pruned frame's kept tokens go in at consecutive positions, in grid order, as
        # LLaVA-OneVision's 1-D RoPE places any frame's tokens; batch.positions is for M-RoPE.
        embeds, header = self._with_marker(batch)
        self.engine.prefill(embeds, logits=False, kind=FRAME, stamp_ns=batch.stamp_ns, header=header)
        self._newest_ns = batch.stamp_ns
        self._turn_has_frames = True
        if self._caption_anchor_ns is None:
            self._caption_anchor_ns = batch.stamp_ns
        if self._caption_from_ns is None:
            self._caption_from_ns = batch.stamp_ns

    def _with_marker(self, batch: TokenBatch) -> tuple[torch.Tensor, int]:
        """The frame's time marker (for models that read one) then its tokens, and the marker's
        length. The marker is part of the frame: it leaves the cache and comes back from
        memory with it."""
        if self._first_ns is None:
            self._first_ns = batch.stamp_ns
        prompt = self.model.prompt
        if not prompt.frame_marker:
            return batch.embeddings, 0
        seconds = (batch.stamp_ns - self._first_ns) // 1_000_000_000
        marker = self.model.embed_tokens(self.model.tokenize(prompt.marker(seconds)))[0]
        return torch.cat([marker, batch.embeddings.to(marker.device, marker.dtype)]), marker.shape[0]

    def ask(self, question: str, max_new_tokens: int | None = None, recall: bool = True) -> Answer:
        """Answer from what the context holds now, and from the frames long-term memory
        brings back for this question (unless `recall` is off); the question and answer
        stay in the context."""
        start = time.perf_counter()
        error = self.question_error(question)
        if not error and not self.has_frames:
            error = "no camera frames received yet: nothing to answer from"
        limit = max_new_tokens or self.cfg.language.max_new_tokens
        prompt_ids = None
        if not error:
            self._start()
            prompt_ids = self._question_ids(question)
            error = self._reserve(prompt_ids.numel() + limit, recall)
        if error:
            return Answer(question, "", self.newest_stamp_ns, 0.0, success=False, error=error)
        try:
            if recall:
                self._recall(question, prompt_ids.numel() + limit)
            logits = self._close_turn(prompt_ids)
            first_token_ms = (time.perf_counter() - start) * 1e3
            evidence = self.frame_stamps  # the frames this answer attends to, retrieved ones included
            generation = generate(self.engine, logits, limit, self.model.stop_token_ids,
                                  sampling(self.cfg.language), prompt_ids)
        finally:
            if self.memory is not None:
                self.engine.remove_retrieved()  # the streaming context is as it was, plus this turn
        self._open_turn(generation.token_ids, generation.stopped)
        ids = [t for t in generation.token_ids if t not in self.model.stop_token_ids]
        text = self.model.tokenizer.decode(ids, skip_special_tokens=True).strip()
        latency = (time.perf_counter() - start) * 1e3
        return Answer(question, text, self.newest_stamp_ns, latency, evidence,
                      token_ids=generation.token_ids, first_logits=generation.first_logits,
                      first_token_ms=first_token_ms)

    def maybe_caption(self) -> Caption | None:
        """A caption when `caption_interval_s` of stream has passed since the last one."""
        interval = self.cfg.language.caption_interval_s
        if interval <= 0 or self._caption_from_ns is None:
            return None
        if self.newest_stamp_ns - self._caption_anchor_ns < interval * 1e9:
            return None
        start_ns = self._caption_from_ns
        # A caption tells what happened since the last one: the window, not long-term memory.
        answer = self.ask(self.cfg.language.caption_prompt, self.cfg.language.caption_max_new_tokens, recall=False)
        self._caption_anchor_ns = answer.stamp_ns
        self._caption_from_ns = None  # the next frame starts the next caption's span
        return Caption(answer.text, start_ns, answer.stamp_ns, answer.latency_ms)

    def _start(self) -> None:
        if not self._started:
            self.engine.prefill_tokens(self.model.tokenize(self.model.prompt.stream_prefix), logits=False)
            self._started = True

    def _question_ids(self, question: str) -> torch.Tensor:
        prompt = self.model.prompt
        return self.model.tokenize(prompt.question_prefix + question + prompt.question_suffix)[0]  # [T]

    def _closes_frames(self) -> bool:
        return self._turn_has_frames and self.model.frames_end_embedding is not None

    def _reserve(self, tokens: int, recall: bool = True) -> str:
        """Evict now for the whole question and answer, so decoding never evicts; or say why not.
        With long-term memory, also for the frames a question may bring back, room allowing."""
        tokens += self._closes_frames()
        if tokens > self.engine.room:
            return (f"the question and answer need {tokens} tokens of KV cache; at most {self.engine.room} "
                    f"can be freed (language.kv_budget_tokens = {self.cfg.language.kv_budget_tokens})")
        extra = self._recall_tokens() if recall else 0
        self.engine.make_room(tokens + min(extra, self.engine.room - tokens))
        return ""

    def _recall_tokens(self) -> int:
        """The most tokens retrieval could bring back: the top_k largest stored frames."""
        if self.memory is None:
            return 0
        return sum(heapq.nlargest(self.memory.settings.top_k, (f.tokens for f in self.memory.frames)))

    def _recall(self, question: str, reserved: int) -> None:
        """Bring back the stored frames that match the question into the free slots."""
        if self.memory is None:
            return
        room = self.engine.free - reserved - self._closes_frames()
        self.engine.recall(self.model.embed_tokens(self.model.tokenize(question))[0], room)

    def _close_turn(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        if self._closes_frames():
            self.engine.prefill(self.model.frames_end_embedding[None], logits=False, evict=False)
        return self.engine.prefill_tokens(prompt_ids, evict=False)

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
        positions, cells = batch.positions, batch.grid[0] * batch.grid[1]
        if positions.ndim != 1 or positions.numel() != batch.embeddings.shape[0]:
            raise ValueError(f"{positions.numel()} positions for {batch.embeddings.shape[0]} tokens")
        if cells and (int(positions.min()) < 0 or int(positions.max()) >= cells
                      or bool((positions[1:] <= positions[:-1]).any())):
            raise ValueError(f"positions must ascend inside the {batch.grid[0]}x{batch.grid[1]} grid")

    def question_error(self, question: str) -> str:
        """Why a question is refused whatever the stream holds; "" when it is acceptable."""
        if not isinstance(question, str) or not question.strip():
            return "empty question"
        limit = self.cfg.language.max_question_chars
        if len(question) > limit:
            return f"question has {len(question)} characters; the limit is {limit}"
        # rclpy decodes a string field's invalid UTF-8 bytes to U+FFFD; Python callers may
        # pass lone surrogates (bytes decoded with surrogateescape). Neither is a question.
        try:
            question.encode("utf-8")  # fails on lone surrogates, in C rather than a loop per character
        except UnicodeEncodeError:
            return "question is not valid UTF-8"
        if "\ufffd" in question:
            return "question is not valid UTF-8"
        if "\x00" in question:
            return "question holds a NUL character"
        return ""
