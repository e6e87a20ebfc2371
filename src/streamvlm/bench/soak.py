"""Soak: an hour or more of stream through both stages' workers, with questions in bursts.

The workers behind the ROS nodes (VisionWorker, LanguageWorker) run as the nodes run them,
on their own threads; a feeder pushes `--frames` camera frames at stamps `1/--fps` apart,
as fast as the stages take them (faster than real time), and an asker fires a burst of
`--burst` questions every `--question-every` frames. A burst larger than the question
queue (`--queue`) is refused in part as busy, and one empty question per burst is refused
for its reason: both count as rejected. The frames cycle through the first `--distinct`
frames of `--source` (the stream never ends; its content repeats).

Reported: frames pushed and where each went (ingested, or a counted drop); questions
answered, rejected, and lost (no response within `--answer-timeout` after the run);
crashes (frames or questions whose processing raised, and worker threads that died); and
rss_growth: resident memory at the end over resident memory after warm-up (`--warm-up`,
a share of the frames: by then the KV cache and long-term memory have filled to their
budgets), minus one. The long-term memory is capped at `--memory-mb` so that it reaches
its steady state inside the warm-up; beyond the caps, nothing may grow.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, TimeoutError

from streamvlm.bench.measure import median, progress, rss_bytes
from streamvlm.bench.sources import label, sampled
from streamvlm.config import PipelineConfig
from streamvlm.llm.stage import LanguageStage
from streamvlm.llm.worker import LanguageWorker
from streamvlm.models import load_model
from streamvlm.vision.stage import VisionStage
from streamvlm.vision.worker import VisionWorker

RSS_WINDOW = 0.02  # share of the frames whose RSS samples make each end's median


def run(args) -> dict:
    cfg = PipelineConfig().replace(
        model={"name": args.model, "fallback_to_tiny": False},
        vision={"fps": 0.0},  # the feeder paces the stream; every frame is taken
        language={"cache.budget_tokens": args.budget, "caption_interval_s": args.caption_every,
                  "caption_max_new_tokens": 8, "max_new_tokens": args.answer_tokens,
                  "memory.max_mb": args.memory_mb})
    model = load_model(cfg.model)
    language = LanguageWorker(LanguageStage(cfg, model), max_pending_frames=8, max_pending_questions=args.queue)
    vision = VisionWorker(VisionStage(cfg, model), lambda rgb: rgb, language.submit_batch)
    frames = [rgb for _, rgb in sampled(args.source, args.fps, args.distinct)]
    period_ns = round(1e9 / args.fps)
    asker = Asker(language, args.burst)
    rss: list[float] = []
    vision.start()
    language.start()
    crashes = 0
    bar = progress(args.frames, "soak")
    start = time.perf_counter()
    try:
        for i in range(args.frames):
            vision.submit((i + 1) * period_ns, frames[i % len(frames)])
            _wait_until_taken(vision, language, i + 1)
            if args.question_every and (i + 1) % args.question_every == 0:
                asker.burst(i)
            rss.append(rss_bytes() / 2**20)
            bar.update()
    except Exception:  # noqa: BLE001 - a feeder failure is a crash to report, not a traceback
        crashes += 1
    bar.close()
    wall_s = time.perf_counter() - start
    lost = asker.collect(args.answer_timeout)
    crashes += vision.failed + language.failed + sum(not t.is_alive() for t in (vision._thread, language._thread))
    vision.stop()
    language.stop()
    window = max(1, int(len(rss) * RSS_WINDOW))
    warm = int(len(rss) * args.warm_up)
    after_warm_up = median(rss[max(warm - window, 0):warm + 1])
    end = median(rss[-window:])
    status = language.status()
    return {
        "frames": len(rss),
        "rss_growth": round(end / after_warm_up - 1, 4),
        "answered": asker.answered,
        "rejected": asker.rejected,
        "lost": lost,
        "crashes": crashes,
        "frames_ingested": language.ingested,
        "frames_dropped": vision.dropped_busy + vision.dropped_invalid + vision.dropped_late
        + language.dropped_invalid + language.dropped_late + language.dropped_overflow,
        "rejected_busy": asker.busy,
        "captions": language.captions,
        "rss_mb_after_warm_up": round(after_warm_up, 1),
        "rss_mb_end": round(end, 1),
        "rss_mb_peak": round(max(rss), 1),
        "kv_tokens": status["KV tokens in use"],
        "memory_frames": status.get("memory frames", 0),
        "memory_mib": status.get("memory MiB", 0.0),
        "stream_minutes": round(args.frames / args.fps / 60, 1),
        "wall_s": round(wall_s, 1),
        "realtime_factor": round(args.frames / args.fps / wall_s, 2),
        "answer_ms_median": round(median(asker.latencies_ms), 1),
        "source": label(args.source),
        "model": args.model,
        "budget": args.budget,
        "memory_mb": args.memory_mb,
        "fps": args.fps,
    }


def _wait_until_taken(vision: VisionWorker, language: LanguageWorker, pushed: int) -> None:
    """Back-pressure: the next frame goes in when the encoder is done with this one and the
    language queue has room, so every frame is processed (no busy drops) at full speed."""
    while True:
        encoded = vision.processed + vision.dropped_invalid + vision.failed + vision.dropped_late + vision.skipped
        behind = language.received - language.ingested - language.dropped_invalid - language.dropped_late
        if encoded >= pushed and behind < 4:
            return
        time.sleep(0.0005)


class Asker:
    """Questions in bursts from their own thread; every future is kept to count what came back."""

    def __init__(self, worker: LanguageWorker, size: int):
        self.worker, self.size = worker, size
        self.futures: list[Future] = []
        self.answered = self.rejected = self.busy = 0
        self.latencies_ms: list[float] = []
        self._threads: list[threading.Thread] = []

    def burst(self, index: int) -> None:
        def ask():
            questions = [f"Frame {index}: what is happening? ({n})" for n in range(self.size)] + [""]
            self.futures.extend(self.worker.ask(q) for q in questions)

        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        self._threads.append(thread)

    def collect(self, timeout_s: float) -> int:
        """Wait for every answer; returns how many never came (lost)."""
        for thread in self._threads:
            thread.join(timeout_s)
        deadline = time.monotonic() + timeout_s
        lost = 0
        for future in self.futures:
            try:
                answer = future.result(timeout=max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                lost += 1
                continue
            if answer.success:
                self.answered += 1
                self.latencies_ms.append(answer.latency_ms)
            else:
                self.rejected += 1
                self.busy += answer.error.startswith("busy")
        return lost
