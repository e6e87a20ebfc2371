"""Does the LLM stage run at constant cost and memory over a long stream?

Frames of random visual tokens (the decoder cost does not depend on their values) are
ingested through LanguageStage (with a question every `--question-every` frames, when
set; its answer is not timed), first with the
fixed-budget streaming cache for `--frames` frames, then with the full-attention
baseline, which stops once its KV cache passes `--baseline-max-mb`. Process memory is
compared after warm-up (frame 150) and at the end, less the long-term memory's store:
frames leaving the budgeted cache go there (`--memory-*`, as `language.memory.*`), and it
grows by design up to its `max_mb`, dropping its oldest frames after that; what its
tensors hold is reported on its own (`store_mb_*`). Measured with the tiny model over the
2000 frames after warm-up (`--frames 2150`): the process grew 17.7 MiB and the store 17.8
(memory_growth -0.0002); with the store off (`--memory-max-mb 0`), -0.0082. Over the
default 5000 frames it was 0.0251: between the store's doublings the process outside it
grows about 2.5 KiB a frame, none of it live (tracemalloc sees 0.25 KiB of Python
objects a frame; glibc's `malloc_trim` hands it all back, to below the warm-up level);
the allocator keeps freed pages of the per-frame temporaries. Left as found. Per-frame ingest latency is compared
late (the stream's next 50 frames) and early (frames 100-149 of a second, fresh stage of
the same kind), the two fed alternately, frame by frame, so that the load of a shared
machine falls on both alike. The one stream's own medians of frames 75-124 and of its
last 50 are reported too (`early_ms`, `late_ms`).

Per-frame cost follows the tokens in the cache. With frames only, the cache is at its
steady size once the vision window is full (16 frames at the defaults). Questions add
text until the text sink and text window are full (1024 tokens at the defaults, dozens
of questions), so with them the cost still rises after frame 100, up to the budget;
`context_tokens_early` and `context_tokens_end` show how much.

The third mode, `recompute`, is the sliding-window baseline of StreamingVLM (Xu et al.,
2025, arXiv:2510.09608, Fig. 1): no KV is reused, so at each frame the window the budgeted
cache keeps (the vision window's frames, the new one last) is prefilled again into a fresh
full-attention context. It keeps what the budgeted cache keeps, at a window's prefill per
frame; it runs for `--recompute-frames` frames, enough for its cost to settle.

`series` holds each mode's per-frame ingest time, process memory and context size, for
the plots of `bench all`.
"""

from __future__ import annotations

import time

from collections import deque

from streamvlm.bench.measure import median, progress, random_frame, rss_bytes
from streamvlm.bench.options import given
from streamvlm.config import PipelineConfig
from streamvlm.llm.memory import MemorySettings
from streamvlm.llm.stage import LanguageStage
from streamvlm.models import load_model

WARM_UP = 150
EARLY = slice(75, 125)
LATE = 50
INTERLEAVED = range(100, 150)  # the early stage's frames, fed alternately with the late stage's


def run(args) -> dict:
    if args.frames < 2 * WARM_UP:
        raise ValueError(f"--frames must be at least {2 * WARM_UP}")
    base = PipelineConfig().replace(model={"name": args.model, "fallback_to_tiny": False},
                                    language={"caption_interval_s": 0.0, "max_new_tokens": 8,
                                              "memory": given(args, MemorySettings, prefix="memory_")})
    model = load_model(base.model)
    kv_bytes_per_token = _kv_bytes_per_token(model.decoder)
    cap_tokens = int(args.baseline_max_mb * 2**20 / kv_bytes_per_token)
    results = {}
    for name, budget, cap in (("budgeted", args.budget, None), ("baseline", 0, cap_tokens)):
        cfg = base.replace(language={"cache.budget_tokens": budget})
        label = "budgeted" if budget else "full attention"
        feed = _Feeder(args, model.decoder.config.hidden_size)
        late = LanguageStage(cfg, model)
        results[name] = _stream(late, feed, args.frames, cap, label)
        results[name]["interleaved_ratio"] = _interleaved(late, LanguageStage(cfg, model), feed)
    budgeted, full = results["budgeted"], results["baseline"]
    window = budgeted["frames_in_cache_end"]  # what the budgeted cache keeps is what is recomputed
    feed = _Feeder(args, model.decoder.config.hidden_size)
    recompute = _recompute(LanguageStage(base.replace(language={"cache.budget_tokens": 0}), model), feed,
                           min(args.frames, args.recompute_frames), window)
    series = {name: results[name].pop("series") for name in ("budgeted", "baseline")}
    series["recompute"] = recompute.pop("series")
    return {
        "latency_ratio": budgeted["interleaved_ratio"],
        "memory_growth": budgeted["memory_growth"],
        "store_mb_end": budgeted["store_mb_end"],
        "baseline_latency_ratio": full["interleaved_ratio"],
        "baseline_memory_growth": full["memory_growth"],
        # Steady per-frame cost of re-prefilling the window, over the budgeted cache's late frames.
        "recompute_ratio": round(recompute["late_ms"] / budgeted["late_ms"], 3),
        "frames": args.frames,
        "budgeted": budgeted,
        "baseline": full,
        "recompute": recompute,
        "series": series,
        "model": args.model,
        "tokens_per_frame": args.tokens_per_frame,
        "budget": args.budget,
        "question_every": args.question_every,
        "kv_bytes_per_token": kv_bytes_per_token,
    }


class _Feeder:
    """Feeds frame i of the stream to a stage and times its ingest."""

    def __init__(self, args, hidden: int):
        self.args, self.hidden = args, hidden
        self.period_ns = int(1e9 / args.fps)

    def batch(self, stage: LanguageStage, i: int):
        return random_frame(stage.model.name, self.hidden, i, self.args.tokens_per_frame, self.period_ns)

    def __call__(self, stage: LanguageStage, i: int) -> float:
        batch = self.batch(stage, i)
        start = time.perf_counter()
        stage.ingest(batch)
        ms = (time.perf_counter() - start) * 1e3
        if self.args.question_every and (i + 1) % self.args.question_every == 0:
            stage.ask("What happened?")
        return ms


def _interleaved(late: LanguageStage, early: LanguageStage, feed: _Feeder) -> float:
    """Median late / median early ingest time, the two stages fed alternately."""
    for i in range(INTERLEAVED.start):
        feed(early, i)
    offset = late.newest_stamp_ns // feed.period_ns
    late_ms, early_ms = [], []
    for i in INTERLEAVED:
        late_ms.append(feed(late, offset + i - INTERLEAVED.start))
        early_ms.append(feed(early, i))
    return round(median(late_ms) / median(early_ms), 3)


def _stream(stage: LanguageStage, feed: _Feeder, frames: int, cap_tokens: int | None, label: str) -> dict:
    latencies, rss_warm, store_warm, context_early = [], None, 0, None
    series = {"stream_s": [], "frame_ms": [], "rss_mb": [], "context_tokens": []}
    bar = progress(frames, label)
    for i in range(frames):
        latencies.append(feed(stage, i))
        _record(series, i / feed.args.fps, latencies[-1], stage.context_tokens)
        if i + 1 == EARLY.start + 25:
            context_early = stage.context_tokens
        if i + 1 == WARM_UP:
            rss_warm, store_warm = rss_bytes(), _store_bytes(stage)
        bar.update()
        if cap_tokens is not None and stage.context_tokens > cap_tokens:
            break
    bar.close()
    rss_end, store_end = rss_bytes(), _store_bytes(stage)
    done = len(latencies)
    outside = (rss_end - store_end) - (rss_warm - store_warm) if rss_warm else None
    return {
        "frames": done,
        "early_ms": round(median(latencies[EARLY]), 3),
        "late_ms": round(median(latencies[-LATE:]), 3) if done > WARM_UP else None,
        # growth of what the process holds outside the long-term store, over what it held at warm-up
        "memory_growth": round(outside / (rss_warm - store_warm), 4) if rss_warm else None,
        "rss_mb_after_warm_up": round(rss_warm / 2**20, 1) if rss_warm else None,
        "rss_mb_end": round(rss_end / 2**20, 1),
        "store_mb_after_warm_up": round(store_warm / 2**20, 2),
        "store_mb_end": round(store_end / 2**20, 2),
        "context_tokens_early": context_early,
        "context_tokens_end": stage.context_tokens,
        "frames_in_cache_end": len(stage.frame_stamps),
        "stopped_at_memory_cap": cap_tokens is not None and done < frames,
        "series": series,
    }


def _recompute(stage: LanguageStage, feed: _Feeder, frames: int, window: int) -> dict:
    """Per frame: a fresh context, and the last `window` frames prefilled into it again."""
    recent = deque(maxlen=window)
    series = {"stream_s": [], "frame_ms": [], "rss_mb": [], "context_tokens": []}
    bar = progress(frames, "window recompute")
    for i in range(frames):
        recent.append(feed.batch(stage, i))  # made before the clock starts, as the other modes' are
        start = time.perf_counter()
        stage.reset()
        for batch in recent:
            stage.ingest(batch)
        _record(series, i / feed.args.fps, (time.perf_counter() - start) * 1e3, stage.context_tokens)
        bar.update()
    bar.close()
    steady = series["frame_ms"][window:] or series["frame_ms"]
    return {"frames": frames, "window_frames": window, "late_ms": round(median(steady[-LATE:]), 3),
            "context_tokens_end": stage.context_tokens, "series": series}


def _store_bytes(stage: LanguageStage) -> int:
    """What the long-term store holds allocated (its ring, used or not)."""
    return stage.memory.reserved_bytes if stage.memory is not None else 0


def _record(series: dict, stream_s: float, ms: float, context_tokens: int) -> None:
    series["stream_s"].append(round(stream_s, 3))
    series["frame_ms"].append(round(ms, 3))
    series["rss_mb"].append(round(rss_bytes() / 2**20, 1))
    series["context_tokens"].append(context_tokens)


def _kv_bytes_per_token(decoder) -> int:
    config = decoder.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = decoder.get_input_embeddings().weight.element_size()
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * element
