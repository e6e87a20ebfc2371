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
the evaluation model was trained on full contexts of up to 128 frames); needle questions,
about the first minute, come from `--needle-minutes` on (10+ minutes after the needle),
and only the bounded-memory modes get that far.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import yaml

from streamvlm.bench.measure import progress
from streamvlm.bench.qa_record import markdown, save  # markdown: the table `bench qa` prints
from streamvlm.config import PipelineConfig, from_flat, load
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
    if getattr(args, "readme", None) and not getattr(args, "out", None):
        raise ValueError("--readme needs --out DIR (the README table is written from DIR/qa.json)")
    base = load(args.config).replace(model={"name": args.model, "fallback_to_tiny": False},
                                            language={"caption_interval_s": 0.0})
    plan = _plan(args, base)  # mode -> (its config, whether it streams the whole stream)
    modes = list(plan)
    frames = round(args.minutes * 60 * args.fps)
    short_until = min(frames, round(args.short_minutes * 60 * args.fps))
    streams = []
    for k in range(args.streams):
        scene = evaluation_scene(args.seed + k, frames, fps=args.fps)
        asked = stream_questions(scene, args.seed + k, every=args.every, short_until=short_until,
                                 needle_after=round(args.needle_minutes * 60 * args.fps),
                                 needle_every=round(5 * 60 * args.fps))
        streams.append((scene, asked))
    model = load_shared(base.model)  # held here, so every mode reuses the loaded weights
    scores: dict[str, dict[str, list[int]]] = {m: {} for m in modes}
    seconds: dict[str, float] = {}
    examples: dict[str, list[dict]] = {m: [] for m in modes}
    tokens: dict[str, dict[str, list[int]]] = {m: {"frame": [], "context": []} for m in modes}
    found: dict[str, list[int]] = {m: [] for m in modes}
    for mode, (cfg, long_range) in plan.items():
        start = time.perf_counter()
        for scene, asked in streams:
            last = scene.frames if long_range else short_until
            todo = [q for q in asked if q.frame < last and (q.kind != "needle" or long_range)]
            for question, answer in _answers(cfg, model, scene, todo, last, f"{mode} seed {scene.seed}", tokens[mode]):
                reply = answer.text if answer.success else ""
                ok = is_correct(question, reply)
                scores[mode].setdefault(question.kind, []).append(int(ok))
                if question.kind == "needle":  # was the frame it appeared in among those attended to?
                    found[mode].append(int(scene.stamp_ns(question.about) in answer.evidence_ns))
                if len(examples[mode]) < args.examples:
                    examples[mode].append({"q": question.text, "expected": question.answer, "got": reply})
        seconds[mode] = round(time.perf_counter() - start, 1)
    result = _report(scores, seconds, examples, tokens, found, streams, args)
    if getattr(args, "out", None):
        save(result, args.out, getattr(args, "readme", None))
    return result


def _plan(args, base: PipelineConfig) -> dict[str, tuple[PipelineConfig, bool]]:
    """The modes to run: the named ones, then each `--sweep [MODE:]NAME=V1,V2` value as a mode
    of its own, MODE (default `--sweep-base`) with that one setting changed, named `NAME=V`
    (`MODE:NAME=V` when MODE is given), so one run can sweep settings of several modes
    against one reference. Settings joined by `&` change together, every combination of
    their values a mode (`MODE:A=1,2&B=x`: A=1&B=x and A=2&B=x)."""
    named = args.modes or ([] if args.sweep else list(MODES))
    sweeps = []
    for text in args.sweep or []:
        mode, colon, rest = text.partition(":") if "=" not in text.partition(":")[0] else ("", "", text)
        parts = []
        for part in rest.split("&"):
            name, sep, values = part.partition("=")
            if not sep or not values or not name:
                raise ValueError(f"--sweep wants [MODE:]NAME=V1,V2[&NAME=V...]; got {text!r}")
            parts.append([(name, value) for value in values.split(",")])
        sweeps.append((mode or args.sweep_base, list(itertools.product(*parts)), f"{mode}:" if colon else ""))
    unknown = sorted(set(named + [mode for mode, *_ in sweeps]) - set(MODES))
    if unknown:
        raise ValueError(f"unknown modes {unknown}; known: {list(MODES)}")
    plan = {mode: (base.replace(**MODES[mode]), mode in LONG_RANGE_MODES) for mode in named}
    for mode, combinations, prefix in sweeps:
        for settings in combinations:
            cfg = from_flat({name: yaml.safe_load(value) for name, value in settings}, base.replace(**MODES[mode]))
            plan[prefix + "&".join(f"{name}={value}" for name, value in settings)] = (cfg, mode in LONG_RANGE_MODES)
    return plan


def _answers(cfg: PipelineConfig, model, scene, questions, last: int, label: str, tokens: dict):
    """(question, Answer) for each question, streaming frames 0..last-1 of the scene; the tokens
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
            yield question, language.ask(question.text, max_new_tokens=cfg.language.max_new_tokens)
        bar.update()
    bar.close()


def _report(scores, seconds, examples, tokens, found, streams, args) -> dict:
    def mean(values):
        return round(float(np.mean(values)), 4) if values else None

    modes = {}
    for mode, by_kind in scores.items():
        short = [v for kind in SHORT_RANGE for v in by_kind.get(kind, [])]
        every = [v for values in by_kind.values() for v in values]
        modes[mode] = {
            "accuracy": mean(every),
            "short_range": mean(short),
            "by_type": {kind: mean(by_kind[kind]) for kind in KINDS if kind in by_kind},
            # 95% Wilson intervals: what the accuracies above may be, given how few questions
            # each rests on (a 0.62 from 13 questions spans 0.36-0.82).
            "interval": {"accuracy": wilson(every), "short_range": wilson(short),
                         **{kind: wilson(by_kind[kind]) for kind in KINDS if kind in by_kind}},
            "questions": len(every),
            "questions_by_type": {kind: len(by_kind[kind]) for kind in KINDS if kind in by_kind},
            "seconds": seconds[mode],
            # What each answer cost: visual tokens sent per frame, and the context a question meets.
            "tokens_per_frame": mean(tokens[mode]["frame"]),
            "context_tokens": mean(tokens[mode]["context"]),
            # Share of needle questions whose answer attended to the frame the needle appeared
            # in: tells a retrieval miss from a misreading (the answer needs that frame).
            "needle_frame_attended": mean(found[mode]),
        }
    reference = modes.get("reference", {})
    for mode, row in modes.items():
        row["retained"] = {kind: round(acc / reference["by_type"][kind], 4) for kind, acc in row["by_type"].items()
                           if reference.get("by_type", {}).get(kind) and acc is not None}
        # Accuracy retained (mode / reference) over the short-range questions both answer:
        # the figure a default must keep at 0.97 or more.
        row["retained_short_range"] = (round(row["short_range"] / reference["short_range"], 4)
                                       if reference.get("short_range") and row["short_range"] is not None else None)
    counts: dict[str, int] = {}
    for _, asked in streams:
        for question in asked:
            counts[question.kind] = counts.get(question.kind, 0) + 1
    return {"modes": modes, "questions": counts, "streams": len(streams), "minutes": args.minutes,
            "short_minutes": args.short_minutes, "fps": args.fps, "model": args.model,
            "chance": _chance(streams), "examples": examples}


def wilson(hits: list[int], z: float = 1.96) -> list[float] | None:
    """The 95% Wilson score interval of an accuracy from 0/1 outcomes (Wilson, JASA 1927):
    unlike the normal approximation it stays inside [0, 1] and is sound for few questions
    and accuracies near 0 or 1."""
    n = len(hits)
    if n == 0:
        return None
    p = sum(hits) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def _chance(streams) -> dict:
    """Per type, the accuracy of always giving that type's most common answer."""
    answers: dict[str, list[str]] = {}
    for _, asked in streams:
        for question in asked:
            answers.setdefault(question.kind, []).append(question.answer)
    return {kind: round(max(values.count(a) for a in set(values)) / len(values), 4)
            for kind, values in answers.items()}
