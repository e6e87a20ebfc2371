"""LanguageStage: visual tokens in, captions and answers out, over one streaming context.

The stream is one long chat (see `models.prompt`): frames are prefilled into the KV cache
as they arrive, a question closes the user turn, the answer is generated and stays in the
context, and the next frames open a new turn. Captions are questions the stage asks itself.
"""

from __future__ import annotations

import time

import torch

from streamvlm.cameras import MAX_CAMERAS, camera_error
from streamvlm.config import LanguageConfig, PipelineConfig
from streamvlm.llm.alerts import AlertChecker, yes_no_ids
from streamvlm.llm.contract import CacheFull, ContextEngine
from streamvlm.llm.decoding import Generation, generate
from streamvlm.llm.engine import StreamingEngine
from streamvlm.llm.kv_cache import frame_layout
from streamvlm.llm.memory import FrameMemory
from streamvlm.llm.reference import FullAttentionEngine
from streamvlm.models import VisionLanguageModel
from streamvlm.timeline import CameraTimelines
from streamvlm.types import Alert, Answer, Caption, TokenBatch


def make_engine(cfg: LanguageConfig, model: VisionLanguageModel) -> ContextEngine:
    """The streaming engine at the configured budget, with long-term memory when it is on,
    or the full-attention reference (which never evicts) at budget 0."""
    if not cfg.cache.bounded:
        return FullAttentionEngine(model.decoder, model.lm_head)
    engine = StreamingEngine(model.language, model.lm_head, cfg.cache, cfg.prefill_chunk_tokens)
    if cfg.memory.enabled:
        engine.attach_memory(FrameMemory(cfg.memory, engine.device))
    return engine


class LanguageStage:
    def __init__(self, cfg: PipelineConfig, model: VisionLanguageModel):
        self.cfg = cfg
        self.model = model
        self.engine = make_engine(cfg.language, model)
        self.timeline = CameraTimelines(cfg.stream)  # applied by whoever receives the tokens (worker, pipeline)
        self.alerts = AlertChecker(cfg.language.alerts)
        self._yes_no: tuple[list[int], list[int]] | None = None  # first tokens of yes and of no
        self._newest_ns: int | None = None  # newest frame ingested (it may have left the cache since)
        self._newest_by_camera: dict[str, int] = {}  # each camera's frames come in time order
        self._first_ns: int | None = None  # the stream's first frame: time markers count from it
        self._suffix: torch.Tensor | None = None  # the embedded text closing each frame
        self._started = False
        self._turn_has_frames = False
        self._caption_anchor_ns: int | None = None  # last caption's stamp (first frame before any)
        self._caption_from_ns: int | None = None  # oldest frame not yet covered by a caption

    def reset(self) -> None:
        self.engine.reset()
        self._newest_ns = self._first_ns = None
        self._newest_by_camera = {}
        self.alerts.reset()
        self._started = self._turn_has_frames = False
        self._caption_anchor_ns = self._caption_from_ns = None

    def check_change(self, cfg: PipelineConfig) -> None:
        """Raise ValueError when `cfg` cannot be taken while running (the model and the KV
        budget are fixed); the settings sections validated themselves when `cfg` was built."""
        if cfg.model != self.cfg.model:
            raise ValueError("the model settings are fixed while running; reconfigure the node to change them")
        if cfg.language.cache.budget_tokens != self.cfg.language.cache.budget_tokens:
            raise ValueError("language.cache.budget_tokens sizes the preallocated cache; it is fixed while running")

    def reconfigure(self, cfg: PipelineConfig) -> None:
        """Take new run-time settings, between frames and questions, on the thread that runs them."""
        self.check_change(cfg)
        language = cfg.language
        self.engine.retune(language.cache, language.memory, language.prefill_chunk_tokens)
        self.alerts.settings = language.alerts
        self.retime(cfg)
        self.cfg = cfg

    def retime(self, cfg: PipelineConfig) -> None:
        """The part of a change that whoever admits tokens applies under its own lock: the time
        policy (a worker's `submit_batch` reads it on the receiving thread)."""
        self.timeline.cfg = cfg.stream

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
        return self.engine.memory

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
        # Each camera's frames in time order; frames of several cameras go in as they come
        # (two cameras' frames of one instant are both welcome).
        newest = self._newest_by_camera.get(batch.camera)
        if newest is not None and batch.stamp_ns <= newest:
            whose = f" of camera {batch.camera!r}" if batch.camera else ""
            raise ValueError(f"frame stamp {batch.stamp_ns} is not after the newest{whose} {newest}")
        self._start()
        # With 1-D RoPE a pruned frame's kept tokens go in at consecutive positions, in grid
        # order, as LLaVA-OneVision places any frame's tokens; with M-RoPE (Qwen2-VL) each keeps
        # its grid row and column (batch.positions).
        embeds, header, footer = self._with_text(batch)
        layout = None
        if self.model.language.position_axes == 3:
            layout = frame_layout(header, batch.positions, batch.grid, footer)
        self.engine.prefill_frame(embeds, batch.stamp_ns, header, footer, layout, batch.camera)
        self._newest_by_camera[batch.camera] = batch.stamp_ns
        self._newest_ns = max(batch.stamp_ns, self._newest_ns or batch.stamp_ns)
        self._turn_has_frames = True
        if self._caption_anchor_ns is None:
            self._caption_anchor_ns = batch.stamp_ns
        if self._caption_from_ns is None:
            self._caption_from_ns = batch.stamp_ns

    def _with_text(self, batch: TokenBatch) -> tuple[torch.Tensor, int, int]:
        """The frame's time marker (for models that read one), its tokens, and the text that
        closes it (for models that have one), with the marker's and the closing text's
        lengths. Both are part of the frame: they leave the cache and come back from memory
        with it."""
        if self._first_ns is None:
            self._first_ns = batch.stamp_ns
        prompt = self.model.prompt
        if not prompt.frame_marker and not prompt.frame_suffix and not batch.camera:
            return batch.embeddings, 0, 0
        seconds = max(0, batch.stamp_ns - self._first_ns) // 1_000_000_000  # another camera may start earlier
        if self._suffix is None:  # the same text after every frame: embedded once
            self._suffix = self._embed_text(prompt.frame_suffix)
        named = prompt.frame_marker or batch.camera
        marker, suffix = self._embed_text(prompt.marker(seconds, batch.camera) if named else ""), self._suffix
        tokens = batch.embeddings.to(marker.device, marker.dtype)
        return torch.cat([marker, tokens, suffix]), marker.shape[0], suffix.shape[0]

    def _embed_text(self, text: str) -> torch.Tensor:
        """[T, D] embeddings of `text` ([0, D] for "")."""
        if not text:
            hidden = self.model.decoder.config.hidden_size
            return torch.empty(0, hidden, dtype=self.model.dtype, device=self.model.device)
        return self.model.embed_tokens(self.model.tokenize(text))[0]

    def ask(self, question: str, max_new_tokens: int | None = None, recall: bool = True) -> Answer:
        """Answer from what the context holds now, and from the frames long-term memory
        brings back for this question (unless `recall` is off); the question and answer
        stay in the context."""
        start = time.perf_counter()
        error = self.question_error(question)
        if not error and not self.has_frames:
            error = "no camera frames received yet: nothing to answer from"
        if error:
            return Answer(question, "", self.newest_stamp_ns, 0.0, success=False, error=error)
        self._start()
        prompt_ids = self._question_ids(question)
        limit = max_new_tokens or self.cfg.language.max_new_tokens
        try:
            generation, evidence, cameras, first_token_ms = self._answer(question, prompt_ids, limit, recall, start)
        except CacheFull as err:
            return Answer(question, "", self.newest_stamp_ns, 0.0, success=False, error=str(err))
        self._open_turn(generation.token_ids, generation.stopped)
        ids = [t for t in generation.token_ids if t not in self.model.stop_token_ids]
        text = self.model.tokenizer.decode(ids, skip_special_tokens=True).strip()
        latency = (time.perf_counter() - start) * 1e3
        return Answer(question, text, self.newest_stamp_ns, latency, evidence, cameras,
                      token_ids=generation.token_ids, first_logits=generation.first_logits,
                      first_token_ms=first_token_ms)

    def _answer(self, question: str, prompt_ids: torch.Tensor, limit: int, recall: bool,
                start: float) -> tuple[Generation, list[int], list[str], float]:
        """The answer protocol over the engine (see llm/contract.py): reserve room for the whole
        turn, bring back what memory holds for the question, close the turn, generate, and let
        the retrieved frames go again. Returns the generation, the stamps of the frames it
        attended to (retrieved ones included), their cameras and the time to the first token."""
        closing = self._closing_embeds()  # [n, D], n = 0 when nothing closes the frames
        self.engine.reserve(closing.shape[0] + prompt_ids.numel() + limit, recall)
        try:
            if recall:
                self.engine.recall(self.model.embed_tokens(self.model.tokenize(question))[0])
            if closing.shape[0]:
                self.engine.prefill_text(closing)
            logits = self.engine.prefill_text(self.model.embed_tokens(prompt_ids[None])[0], logits=True)
            first_token_ms = (time.perf_counter() - start) * 1e3
            evidence, cameras = self.frame_stamps, list(self.engine.frame_cameras)
            generation = generate(self.engine, logits, limit, self.model.stop_token_ids,
                                  self.cfg.language.sampling, prompt_ids)
        finally:
            self.engine.release()  # the streaming context is as it was, plus this turn
        return generation, evidence, cameras, first_token_ms

    def check_alerts(self, batch: TokenBatch) -> list[Alert]:
        """After `ingest(batch)`: the alert rules that started to hold, if a check was due."""
        return self.alerts.after_frame(self, batch)

    @torch.inference_mode()
    def yes_probability(self, question: str) -> tuple[float, list[tuple[int, str]]]:
        """The model's probability that the answer to `question` starts with yes rather than
        no, from the context as it is (no retrieval), and the frames (stamp, camera) it held.
        The question is taken back out: the context is left as it was."""
        if self._yes_no is None:
            self._yes_no = yes_no_ids(self.model.tokenizer)
        self._start()
        prompt_ids = self._question_ids(question)
        closing = self._closing_embeds()
        self.engine.reserve(closing.shape[0] + prompt_ids.numel(), recall=False)
        mark = self.engine.mark()
        try:
            if closing.shape[0]:
                self.engine.prefill_text(closing)
            logits = self.engine.prefill_text(self.model.embed_tokens(prompt_ids[None])[0], logits=True)
            evidence = list(zip(self.frame_stamps, self.engine.frame_cameras))
        finally:
            self.engine.rollback(mark)
            self.engine.release()
        yes, no = self._yes_no
        pair = torch.stack([logits[yes].logsumexp(0), logits[no].logsumexp(0)]).float()
        return float(pair.softmax(0)[0]), evidence

    def stream_seconds(self, stamp_ns: int) -> float:
        """Seconds from the stream's first frame, as the time markers count them."""
        # `is None`, not `or`: simulated clocks and generated bags start at stamp 0.
        first = stamp_ns if self._first_ns is None else self._first_ns
        return max(0, stamp_ns - first) / 1e9

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
            prefix = self.model.tokenize(self.model.prompt.stream_prefix)
            self.engine.prefill_text(self.model.embed_tokens(prefix)[0])
            self._started = True

    def _question_ids(self, question: str) -> torch.Tensor:
        prompt = self.model.prompt
        return self.model.tokenize(prompt.question_prefix + question + prompt.question_suffix)[0]  # [T]

    def _closing_embeds(self) -> torch.Tensor:
        """What closes the turn's run of frames before the question ([n, D]: LLaVA-OneVision's
        newline embedding after a video, SmolVLM's blank line), or nothing [0, D]."""
        end = self.model.frames_end_embeddings
        if self._turn_has_frames and end is not None:
            return end
        return self._embed_text("")

    def _open_turn(self, generated: list[int], stopped: bool) -> None:
        # The last generated token is not in the cache yet. A final stop token is the
        # end-of-turn marker that the separator spells out anyway, so it is dropped.
        tail = generated[-1:] if generated and not stopped else []
        ids = tail + self.model.tokenize(self.model.prompt.turn_separator)[0].tolist()
        self.engine.prefill_text(self.model.embed_tokens(torch.tensor([ids]))[0])
        self._turn_has_frames = False

    def check_batch(self, batch: TokenBatch) -> None:
        """Raises ValueError when tokens cannot go into this model's context (stamps aside)."""
        hidden = self.model.decoder.config.hidden_size
        camera = camera_error(batch.camera)
        if camera:
            raise ValueError(camera)
        if batch.camera not in self._newest_by_camera and len(self._newest_by_camera) >= MAX_CAMERAS:
            raise ValueError(f"a camera {batch.camera!r} beyond the {MAX_CAMERAS} this stream already has")
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
