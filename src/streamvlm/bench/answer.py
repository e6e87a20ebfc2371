"""How fast a question is answered after a long stream, and how many frames fit in memory.

Three ways to answer after `--frames` frames, on the same frames and questions:
- reprefill: what a non-streaming VLM does: at the question, prefill every frame and the
  question into a fresh full-attention context;
- full: streaming with the full-attention cache: frames were prefilled as they came, the
  question is prefilled over all of them;
- memory: the fixed-budget streaming cache (vision window, sinks) with long-term memory:
  the question brings back its top-k compressed frames, then is prefilled.
Times are from the question to the first answer token (ttft) and to the whole answer,
medians over `--questions` questions. memory_bytes are the KV tensors each mode holds at
the end (cache buffers, plus the store for `memory`); the reprefill's are the same as
full's, allocated at each question.

Capacity: frames are pushed into a fresh `full` stage until its KV passes `--ceiling-mb`,
and into a fresh `memory` stage whose store gets what the ceiling leaves after the cache
buffers, until the store is full (it then drops its oldest); the frames each holds then
are counted (the memory mode's, in the window plus in the store). The ceiling is on these
accounted tensor bytes, not on process RSS: in one process, memory freed by one mode is
reused by the next, so RSS would not tell the modes apart.

The frames are random visual tokens: cost and memory do not depend on their values; what
retrieval picks does, and is tested separately.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from streamvlm.bench.measure import median, progress, random_frame
from streamvlm.bench.options import given
from streamvlm.config import PipelineConfig
from streamvlm.llm.memory import MemorySettings
from streamvlm.llm.stage import LanguageStage
from streamvlm.models import load_model
from streamvlm.types import TokenBatch

QUESTIONS = ("Where did you last see the red box?", "What happened at the start?",
             "How many people came in?", "What is on the table now?", "Did anything leave?")


def run(args) -> dict:
    memory = given(args, MemorySettings, prefix="memory_")
    base = PipelineConfig().replace(model={"name": args.model, "fallback_to_tiny": False},
                                    language={"caption_interval_s": 0.0, "max_new_tokens": args.answer_tokens})
    model = load_model(base.model)
    configs = {"full": base.replace(language={"cache.budget_tokens": 0}),
               "memory": base.replace(language={"cache.budget_tokens": args.budget, "memory": memory})}
    frames = _Frames(model, args.tokens_per_frame, args.fps)

    stages = {name: LanguageStage(cfg, model) for name, cfg in configs.items()}
    bar = progress(args.frames, "stream")
    for i in range(args.frames):
        for stage in stages.values():
            stage.ingest(frames(i))
        bar.update()
    bar.close()
    ttft, total = {"reprefill": [], "full": [], "memory": []}, {"reprefill": [], "full": [], "memory": []}
    memory_bytes = {}
    for q in range(args.questions):
        question = QUESTIONS[q % len(QUESTIONS)]
        start = time.perf_counter()
        fresh = LanguageStage(configs["full"], model)
        for i in range(args.frames):
            fresh.ingest(frames(i))
        answer = fresh.ask(question)
        prefill_ms = (time.perf_counter() - start) * 1e3 - answer.latency_ms
        ttft["reprefill"].append(prefill_ms + answer.first_token_ms)
        total["reprefill"].append(prefill_ms + answer.latency_ms)
        memory_bytes["reprefill"] = kv_bytes(fresh)
        del fresh
        for name, stage in stages.items():
            answer = stage.ask(question)
            if not answer.success:
                raise RuntimeError(f"{name}: {answer.error}")
            ttft[name].append(answer.first_token_ms)
            total[name].append(answer.latency_ms)
    memory_bytes.update({name: kv_bytes(stage) for name, stage in stages.items()})
    retrieved = len(stages["memory"].memory.frames) if stages["memory"].memory is not None else 0
    del stages

    capacity = {"full": _capacity_full(model, configs["full"], frames, args.ceiling_mb * 2**20, args.capacity_limit),
                "memory": _capacity_memory(model, configs["memory"], frames, args.ceiling_mb * 2**20,
                                           args.capacity_limit)}
    medians = {name: round(median(values), 2) for name, values in ttft.items()}
    return {
        "ttft_ms": medians,
        "answer_ms": {name: round(median(values), 2) for name, values in total.items()},
        "speedup_vs_reprefill": round(medians["reprefill"] / medians["memory"], 2),
        "speedup_vs_full": round(medians["full"] / medians["memory"], 2),
        "capacity_frames": {name: c["frames"] for name, c in capacity.items()},
        "capacity_ratio": round(capacity["memory"]["frames"] / max(1, capacity["full"]["frames"]), 2),
        "memory_bytes": memory_bytes,
        "capacity": capacity,
        "frames": args.frames,
        "tokens_per_frame": args.tokens_per_frame,
        "questions": args.questions,
        "memory_frames_at_questions": retrieved,
        "memory_settings": dataclasses.asdict(configs["memory"].language.memory),
        "budget": args.budget,
        "ceiling_mb": args.ceiling_mb,
        "model": args.model,
        "threads": torch.get_num_threads(),
    }


class _Frames:
    """Frame i of the stream, the same for every mode."""

    def __init__(self, model, tokens: int, fps: float):
        self.hidden, self.tokens, self.model = model.decoder.config.hidden_size, tokens, model.name
        self.period_ns = int(1e9 / fps)

    def __call__(self, i: int) -> TokenBatch:
        return random_frame(self.model, self.hidden, i, self.tokens, self.period_ns)


def kv_bytes(stage: LanguageStage) -> int:
    """Bytes of the KV tensors a stage holds: cache buffers (+ long-term memory)."""
    return stage.engine.nbytes


def _capacity_full(model, cfg, frames, ceiling: int, limit: int) -> dict:
    stage = LanguageStage(cfg, model)
    held = 0
    bar = progress(limit, "capacity full")
    while held < limit:
        stage.ingest(frames(held))
        if kv_bytes(stage) > ceiling:
            break
        held += 1
        bar.update()
    bar.close()
    return {"frames": held, "bytes": kv_bytes(stage), "reached_ceiling": held < limit}


def _capacity_memory(model, cfg, frames, ceiling: int, limit: int) -> dict:
    probe = LanguageStage(cfg, model)
    buffers = kv_bytes(probe) - (probe.memory.nbytes if probe.memory is not None else 0)
    del probe
    if buffers >= ceiling:
        raise ValueError(f"the cache buffers alone ({buffers} bytes) pass the ceiling")
    stage = LanguageStage(cfg.replace(language={"memory.max_mb": (ceiling - buffers) / 2**20,
                                                "memory.max_frames": 0}), model)
    best, pushed = 0, 0
    bar = progress(limit, "capacity memory")
    while pushed < limit and stage.memory.dropped == 0:
        stage.ingest(frames(pushed))
        pushed += 1
        best = max(best, len(stage.frame_stamps) + len(stage.memory))
        bar.update()
    bar.close()
    # bytes: what the frames take (the budget); reserved: the store's tensors, used or not
    reserved = kv_bytes(stage) - stage.memory.nbytes + stage.memory.reserved_bytes
    return {"frames": best, "bytes": kv_bytes(stage), "reserved_bytes": reserved, "under_ceiling": reserved <= ceiling,
            "reached_ceiling": stage.memory.dropped > 0,
            "store_bytes_per_frame": round(stage.memory.nbytes / max(1, len(stage.memory)))}
