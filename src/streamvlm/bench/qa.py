"""Streaming video QA: how often each pipeline mode answers right, on the same synthetic streams.

Every mode streams the same `evaluation_scene`s frame by frame through VisionStage and
LanguageStage and answers the same questions (`synth.questions`) at the same frames;
answers are scored by exact match. The modes change one thing each:

- `reference`: full attention (nothing evicted), delta cache off, pruner off;
- `delta_stc`, `delta_threshold`: the reference with that ViT delta-cache mode;
- `prune_stc`, `prune_adaptive`: the reference with that token pruner;
- `window_only`: a fixed KV budget with recent-vision and recent-text windows, no sinks;
- `sink_windows`: the same plus attention sinks and the text sink (StreamingVLM);
- `memory_retrieval`: the same plus long-term memory, retrieved per question (LiveVLM/ReKV).

Short-range questions come during the first `--short-minutes` of each stream (the
full-attention modes stop there: the reference's context grows with the stream, and
the evaluation model's LM has an 8192-token context); needle questions, about the first
minute, come from minute 10 on, and only the bounded-memory modes get that far.
"""

from __future__ import annotations

import time

import numpy as np

from streamvlm.bench.measure import progress
from streamvlm.config import PipelineConfig, load
from streamvlm.llm.stage import LanguageStage
from streamvlm.models import load_shared
from streamvlm.synth.questions import KINDS, SHORT_RANGE, is_correct, stream_questions
from streamvlm.synth.scene import evaluation_scene
from streamvlm.vision.stage import VisionStage

FULL = {"language": {"cache.budget_tokens": 0}, "vision": {"delta.mode": "off", "prune.mode": "off"}}
BOUNDED = {"vision": {"delta.mode": "off", "prune.mode": "off"}}
MODES = {
    "reference": FULL,
    "delta_stc": {**FULL, "vision": {"delta.mode": "stc", "prune.mode": "off"}},
    "delta_threshold": {**FULL, "vision": {"delta.mode": "threshold", "prune.mode": "off"}},
    "prune_stc": {**FULL, "vision": {"delta.mode": "off", "prune.mode": "stc"}},
    "prune_adaptive": {**FULL, "vision": {"delta.mode": "off", "prune.mode": "adaptive"}},
    "window_only": {**BOUNDED, "language": {"cache.sink_tokens": 0, "cache.text_sink_tokens": 0, "memory.top_k": 0,
                                            "memory.max_mb": 0.0}},
    "sink_windows": {**BOUNDED, "language": {"memory.top_k": 0, "memory.max_mb": 0.0}},
    "memory_retrieval": BOUNDED,
}
LONG_RANGE_MODES = ("window_only", "sink_windows", "memory_retrieval")


def run(args) -> dict:
    base = load(args.config).replace(model={"name": args.model, "fallback_to_tiny": False},
                                            language={"caption_interval_s": 0.0})
    modes = args.modes or list(MODES)
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown modes {unknown}; known: {list(MODES)}")
    frames = round(args.minutes * 60 * args.fps)
    short_until = min(frames, round(args.short_minutes * 60 * args.fps))
    streams = []
    for k in range(args.streams):
        scene = evaluation_scene(args.seed + k, frames, fps=args.fps)
        asked = stream_questions(scene, args.seed + k, every=args.every, short_until=short_until,
                                 needle_after=round(10 * 60 * args.fps), needle_every=round(5 * 60 * args.fps))
        streams.append((scene, asked))
    model = load_shared(base.model)  # held here, so every mode reuses the loaded weights
    scores: dict[str, dict[str, list[int]]] = {m: {} for m in modes}
    seconds: dict[str, float] = {}
    examples: dict[str, list[dict]] = {m: [] for m in modes}
    tokens: dict[str, dict[str, list[int]]] = {m: {"frame": [], "context": []} for m in modes}
    for mode in modes:
        cfg = base.replace(**MODES[mode])
        start = time.perf_counter()
        for scene, asked in streams:
            last = scene.frames if mode in LONG_RANGE_MODES else short_until
            todo = [q for q in asked if q.frame < last and (q.kind != "needle" or mode in LONG_RANGE_MODES)]
            for question, reply in _answers(cfg, model, scene, todo, last, f"{mode} seed {scene.seed}", tokens[mode]):
                ok = is_correct(question, reply)
                scores[mode].setdefault(question.kind, []).append(int(ok))
                if len(examples[mode]) < args.examples:
                    examples[mode].append({"q": question.text, "expected": question.answer, "got": reply})
        seconds[mode] = round(time.perf_counter() - start, 1)
    return _report(scores, seconds, examples, tokens, streams, args)


def _answers(cfg: PipelineConfig, model, scene, questions, last: int, label: str, tokens: dict):
    """(question, reply) for each question, streaming frames 0..last-1 of the scene; the tokens
    each frame sends and the context each question meets go to `tokens`."""
    vision, language = VisionStage(cfg, model), LanguageStage(cfg, model)
    pending = sorted(questions, key=lambda q: q.frame)
    bar = progress(last, label)
    for index in range(last):
        batch = vision.process(scene.frame(index), scene.stamp_ns(index))
        if batch is not None:
            language.ingest(batch)
            tokens["frame"].append(int(batch.embeddings.shape[0]))
        while pending and pending[0].frame == index:
            question = pending.pop(0)
            tokens["context"].append(language.context_tokens)
            answer = language.ask(question.text, max_new_tokens=cfg.language.max_new_tokens)
            yield question, answer.text if answer.success else ""
        bar.update()
    bar.close()


def _report(scores, seconds, examples, tokens, streams, args) -> dict:
    def mean(values):
        return round(float(np.mean(values)), 4) if values else None

    modes = {}
    for mode, by_kind in scores.items():
        short = [v for kind in SHORT_RANGE for v in by_kind.get(kind, [])]
        modes[mode] = {
            "accuracy": mean([v for values in by_kind.values() for v in values]),
            "short_range": mean(short),
            "by_type": {kind: mean(by_kind[kind]) for kind in KINDS if kind in by_kind},
            "questions": sum(len(v) for v in by_kind.values()),
            "seconds": seconds[mode],
            # What each answer cost: visual tokens sent per frame, and the context a question meets.
            "tokens_per_frame": mean(tokens[mode]["frame"]),
            "context_tokens": mean(tokens[mode]["context"]),
        }
    reference = modes.get("reference", {}).get("by_type", {})
    for mode, row in modes.items():
        row["retained"] = {kind: round(acc / reference[kind], 4) for kind, acc in row["by_type"].items()
                           if reference.get(kind) and acc is not None}
    counts: dict[str, int] = {}
    for _, asked in streams:
        for question in asked:
            counts[question.kind] = counts.get(question.kind, 0) + 1
    return {"modes": modes, "questions": counts, "streams": len(streams), "minutes": args.minutes,
            "short_minutes": args.short_minutes, "fps": args.fps, "model": args.model,
            "chance": _chance(streams), "examples": examples}


def _chance(streams) -> dict:
    """Per type, the accuracy of always giving that type's most common answer."""
    answers: dict[str, list[str]] = {}
    for _, asked in streams:
        for question in asked:
            answers.setdefault(question.kind, []).append(question.answer)
    return {kind: round(max(values.count(a) for a in set(values)) / len(values), 4)
            for kind, values in answers.items()}


def markdown(result: dict) -> str:
    """The accuracy table: one row per mode, one column per question type, each cell
    'accuracy (retained vs the reference)'."""
    kinds = [k for k in KINDS if any(k in row["by_type"] for row in result["modes"].values())]
    lines = ["| mode | " + " | ".join(kinds) + " | short-range | questions |",
             "|---" * (len(kinds) + 3) + "|"]
    for mode, row in result["modes"].items():
        cells = []
        for kind in kinds:
            acc = row["by_type"].get(kind)
            kept = row["retained"].get(kind)
            cells.append("–" if acc is None else f"{acc:.2f}" + (f" ({kept:.2f})" if kept is not None else ""))
        short = row["short_range"]
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {'–' if short is None else f'{short:.2f}'} "
                     f"| {row['questions']} |")
    return "\n".join(lines)
