"""LanguageWorker: runs a LanguageStage on one thread; token batches and questions come in
from any thread and are served in arrival order.

The model has one context, so ingesting and answering take turns on a single thread; the
callers only enqueue. A question is answered after every frame that arrived before it, so
its answer sees what the camera saw when it was asked. Both queues are bounded: frames
beyond `max_pending_frames` push out the oldest waiting frame (the LLM is slower than the
encoder: keep latency bounded, count the drop), and questions beyond
`max_pending_questions` are refused at once as busy. Every question gets an `Answer`,
refusals included, through the returned future and the `on_answer` callback.

Run-time settings changes (`reconfigure`) are validated at once, on the caller's thread,
so a bad one is refused with its reason, and applied on the worker thread before the next
frame or question: never in the middle of a prefill or an answer.

Stamps go through the stage's Timeline as they arrive: late frames are dropped, and a
time jump either resets the stream (in turn, after the frames and questions before it)
or continues with shifted stamps (see timeline.py).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

from streamvlm.config import PipelineConfig, settings_status
from streamvlm.llm.stage import LanguageStage
from streamvlm.metrics import RecentValues, ThrottledLog
from streamvlm.pending import PendingChange
from streamvlm.timeline import RESET
from streamvlm.types import Alert, Answer, Caption, TokenBatch

log = logging.getLogger(__name__)


@dataclass
class _Question:
    text: str
    max_new_tokens: int | None
    future: "Future[Answer]"


class LanguageWorker:
    def __init__(self, stage: LanguageStage, *, max_pending_frames: int = 8, max_pending_questions: int = 16,
                 on_caption: Callable[[Caption], None] | None = None,
                 on_answer: Callable[[Answer], None] | None = None,
                 on_alert: Callable[[Alert], None] | None = None,
                 warn: Callable[[str], None] = log.warning):
        if max_pending_frames < 1 or max_pending_questions < 1:
            raise ValueError("queue sizes must be at least 1")
        self.stage = stage
        self._on_caption = on_caption or (lambda caption: None)
        self._on_answer = on_answer or (lambda answer: None)
        self._on_alert = on_alert or (lambda alert: None)
        self._warn = ThrottledLog(warn)
        self._max_frames = max_pending_frames
        self._max_questions = max_pending_questions
        # (arrival number, item, monotonic arrival time, reset the stream before it)
        self._frames: collections.deque[tuple[int, TokenBatch, float, bool]] = collections.deque()
        self._questions: collections.deque[tuple[int, _Question, float, bool]] = collections.deque()
        self._arrival = itertools.count()
        self._change = PendingChange(stage.reconfigure, self._warn)  # settings to take before the next item
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self.received = 0
        self.ingested = 0
        self.dropped_overflow = 0  # pushed out of a full queue while the model was busy
        self.dropped_invalid = 0  # wrong size, model or values
        self.answered = 0
        self.rejected = 0  # refused (empty, too long, busy, no frames) or failed
        self.captions = 0
        self.failed = 0  # frames or questions whose processing raised; logged, and the worker goes on
        self.ms_per_frame = RecentValues()  # prefill time per ingested frame
        self.ms_waiting = RecentValues()  # arrival to ingestion: bounded by the queue size
        self.answer_ms = RecentValues()

    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._run, name="language-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stops after the work in hand; waiting questions are answered with an error."""
        with self._cond:
            self._running = False
            waiting = [entry[1] for entry in self._questions]
            self._questions.clear()
            self._frames.clear()
            self._cond.notify_all()
        for question in waiting:
            self._refuse(question.text, "the node is shutting down", question.future)
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        with self._cond:
            self._change.take()  # no thread uses the stage now

    def reconfigure(self, cfg: PipelineConfig) -> None:
        """Take new run-time settings: refused now with ValueError, or applied before the next
        frame or question. The time policy applies at once (`submit_batch` reads it under the lock)."""
        self.stage.check_change(cfg)
        with self._cond:
            self.stage.retime(cfg)
            self._change.offer(cfg, idle=self._thread is None)
            self._cond.notify()

    def submit_batch(self, batch: TokenBatch) -> bool:
        """Queue one frame's tokens; False (and counted) when they are invalid or late."""
        try:
            self.stage.check_batch(batch)
        except ValueError as err:
            with self._cond:
                self.received += 1
                self.dropped_invalid += 1
            self._warn("invalid", f"dropped invalid vision tokens ({self.dropped_invalid} so far): {err}")
            return False
        with self._cond:
            self.received += 1
            placed = self.stage.timeline.admit(batch.stamp_ns, self._warn, "vision tokens", batch.camera)
            if placed is None:
                return False
            if placed.stamp_ns != batch.stamp_ns:
                batch = dataclasses.replace(batch, stamp_ns=placed.stamp_ns)
            reset = placed.verdict == RESET
            if len(self._frames) >= self._max_frames:
                dropped = self._frames.popleft()
                if dropped[3]:  # the reset still happens, before the next frame
                    if self._frames:
                        self._frames[0] = (*self._frames[0][:3], True)
                    else:
                        reset = True
                self.dropped_overflow += 1
                self._warn("overflow", f"language model slower than the encoder: {self.dropped_overflow} "
                                       "frames dropped so far")
            self._frames.append((next(self._arrival), batch, time.monotonic(), reset))
            self._cond.notify()
        return True

    def drop_invalid(self, reason: str) -> None:
        """Count tokens the caller could not even turn into a batch (a malformed message)."""
        with self._cond:
            self.received += 1
            self.dropped_invalid += 1
        self._warn("invalid", f"dropped invalid vision tokens ({self.dropped_invalid} so far): {reason}")

    def give_up(self, question: str, future: "Future[Answer]", error: str) -> Answer:
        """The asker stopped waiting: the question is withdrawn if not started, and the refusal
        is counted and published like any other. A started answer is still published when done."""
        future.cancel()
        answer = Answer(question, "", self.stage.newest_stamp_ns, 0.0, success=False, error=error)
        with self._cond:
            self.rejected += 1
        self._publish(answer)
        return answer

    def ask(self, question: str, max_new_tokens: int | None = None) -> "Future[Answer]":
        """Queue a question; the future resolves to its Answer (at once when refused)."""
        future: Future[Answer] = Future()
        error = self.stage.question_error(question)
        if not error:
            with self._cond:
                if not self._running:
                    error = "the node is not active"
                elif len(self._questions) >= self._max_questions:
                    error = f"busy: {len(self._questions)} questions are waiting; ask again later"
                else:
                    self._questions.append((next(self._arrival), _Question(question, max_new_tokens, future),
                                            time.monotonic(), False))
                    self._cond.notify()
                    return future
        self._refuse(question, error, future)
        return future

    @property
    def dropped_late(self) -> int:
        """Frames older than the newest, within the reorder window: the context is in time order."""
        return self.stage.timeline.late

    def status(self) -> dict[str, Any]:
        """Figures for diagnostics, by name."""
        return {
            "frames received": self.received,
            "frames ingested": self.ingested,
            "frames dropped (late)": self.dropped_late,
            "frames dropped (busy)": self.dropped_overflow,
            "frames dropped (invalid)": self.dropped_invalid,
            "ms per frame p50": round(self.ms_per_frame.percentile(50), 1),
            "ms per frame p95": round(self.ms_per_frame.percentile(95), 1),
            "ms waiting p95": round(self.ms_waiting.percentile(95), 1),
            "frames in context": len(self.stage.frame_stamps),
            "KV tokens in use": self.stage.context_tokens,
            "KV token budget": self.stage.cfg.language.cache.budget_tokens or "unbounded (full attention)",
            "KV tokens evicted": self.stage.evicted_tokens,
            **self._memory_status(),
            "questions answered": self.answered,
            "questions rejected": self.rejected,
            "questions waiting": len(self._questions),
            "mean answer latency ms": round(self.answer_ms.mean(), 1),
            "captions": self.captions,
            **self.stage.alerts.status(),
            "frames or questions failed": self.failed + self._change.failed,
            **self.stage.timeline.status(),
            "settings changes applied": self._change.applied,
            **settings_status(self.stage.cfg, ("language", "stream")),
        }

    def _memory_status(self) -> dict[str, Any]:
        memory = self.stage.memory
        if memory is None:
            return {"long-term memory": "off"}
        return {"memory frames": len(memory), "memory MiB": round(memory.nbytes / 2**20, 2),
                "memory frames dropped (full)": memory.dropped}

    def _refuse(self, question: str, error: str, future: "Future[Answer]") -> None:
        # Echoed back on `answers`: lone surrogates could not be serialized, so they are spelled out.
        echo = question.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(question, str) else ""
        answer = Answer(echo, "", self.stage.newest_stamp_ns, 0.0, success=False, error=error)
        with self._cond:
            self.rejected += 1
        future.set_result(answer)
        self._publish(answer)

    def _next(self) -> tuple[TokenBatch | _Question, float, bool] | None:
        """The earliest-arrived waiting item, its arrival time and whether the stream resets
        before it, or None when stopping."""
        with self._cond:
            while self._running and not self._frames and not self._questions:
                self._change.take()  # idle: take a change now rather than with the next item
                self._cond.wait()
            if not self._running:
                return None
            self._change.take()  # between items: nothing else touches the stage now
            take_frame = self._frames and (not self._questions or self._frames[0][0] < self._questions[0][0])
            _, item, arrived, reset = (self._frames if take_frame else self._questions).popleft()
            return item, arrived, reset

    def _run(self) -> None:
        while (taken := self._next()) is not None:
            item, arrived, reset = taken
            try:
                if reset:
                    self.stage.reset()
                if isinstance(item, TokenBatch):
                    self.ms_waiting.add((time.monotonic() - arrived) * 1e3)
                    self._ingest(item)
                else:
                    self._answer(item)
            except Exception as err:  # noqa: BLE001 - the worker must outlive any one item
                self.failed += 1
                self._warn("failed", f"language worker error: {type(err).__name__}: {err}")
                if isinstance(item, _Question) and not item.future.done():
                    self._refuse(item.text, f"internal error: {type(err).__name__}: {err}", item.future)

    def _ingest(self, batch: TokenBatch) -> None:
        start = time.perf_counter()
        self.stage.ingest(batch)
        self.ingested += 1
        self.ms_per_frame.add((time.perf_counter() - start) * 1e3)
        for alert in self.stage.check_alerts(batch):
            self._on_alert(alert)
        caption = self.stage.maybe_caption()
        if caption is not None:
            self.captions += 1
            self._on_caption(caption)

    def _answer(self, question: _Question) -> None:
        if not question.future.set_running_or_notify_cancel():
            return  # the asker gave up waiting; nothing to answer
        answer = self.stage.ask(question.text, question.max_new_tokens)
        if answer.success:
            self.answered += 1  # only this thread writes it
            self.answer_ms.add(answer.latency_ms)
        else:
            with self._cond:  # callers count refusals too
                self.rejected += 1
        question.future.set_result(answer)
        self._publish(answer)

    def _publish(self, answer: Answer) -> None:
        try:
            self._on_answer(answer)
        except Exception as err:  # noqa: BLE001
            self._warn("publish", f"publishing an answer failed: {type(err).__name__}: {err}")
