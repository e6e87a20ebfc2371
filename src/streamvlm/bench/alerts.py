"""Alert rules on the evaluation model's synthetic streams: precision and recall.

Every stream is fed frame by frame through VisionStage and LanguageStage with the rules
set; the scene's ground truth says at each frame whether each rule holds. Two modes run
over the same streams:

- `every_frame`: each rule checked at every frame (interval 0, novelty 0): the judgement
  itself, as precision and recall of the checks' yes against the truth;
- `scheduled`: the shipped schedule (`language.alerts.interval_s`, `novelty`), what a user
  gets: alerts on rising edges, scored against the truth's onsets. An alert is right when
  its rule holds at the frame it fired on; an onset is found when its rule fires while the
  condition lasts, within `--within` seconds of the onset.

Thresholds cost nothing to compare: which checks run does not depend on the threshold, so
each mode runs once and every threshold's checks and alerts (the checks' rising edges, as
`AlertChecker` fires them) are scored from the same probabilities.
"""

from __future__ import annotations

import time

from streamvlm.bench.measure import progress
from streamvlm.bench.qa import wilson
from streamvlm.config import load
from streamvlm.llm.stage import LanguageStage
from streamvlm.models import load_shared
from streamvlm.synth.questions import alert_rule, parse_rule, rule_holds
from streamvlm.synth.scene import evaluation_scene
from streamvlm.vision.stage import VisionStage

RULES = (alert_rule("red", None), alert_rule(None, "triangle"), alert_rule("blue", "ellipse"))
SWEPT = (0.3, 0.5, 0.7, 0.9)  # thresholds scored beside the configured one


def run(args) -> dict:
    rules = tuple(args.rule or RULES)
    conditions = {rule: parse_rule(rule) for rule in rules}
    base = load(args.config)
    # The stream runs at the first threshold; the others are read off the same checks.
    thresholds = list(dict.fromkeys(args.threshold or (base.language.alerts.threshold, *SWEPT)))
    base = base.replace(model={"name": args.model, "fallback_to_tiny": False},
                        language={"caption_interval_s": 0.0, "alerts.rules": list(rules),
                                  "alerts.threshold": thresholds[0]})
    modes = {"every_frame": base.replace(language={"alerts.interval_s": 0.0, "alerts.novelty": 0.0}),
             "scheduled": base}
    model = load_shared(base.model)
    frames = round(args.minutes * 60 * args.fps)
    scenes = [evaluation_scene(args.seed + k, frames, fps=args.fps) for k in range(args.streams)]
    result = {"rules": list(rules), "streams": len(scenes), "minutes": args.minutes, "fps": args.fps,
              "model": args.model, "thresholds": thresholds, "rows": []}
    within = round(args.within * args.fps)
    for mode, cfg in modes.items():
        start = time.perf_counter()
        streams = []  # (truth by rule, checks in order)
        for scene in scenes:
            truth = {rule: [rule_holds(scene, i, *conditions[rule]) for i in range(frames)] for rule in rules}
            checks, fired = _stream(cfg, model, scene, f"{mode} seed {scene.seed}")
            # The checker fired exactly where its rising edges at this threshold are, so the
            # other thresholds' alerts can be read off the same checks.
            assert fired == rising_edges(checks, thresholds[0]), "alerts differ from the checks' rising edges"
            streams.append((truth, checks))
        seconds = round(time.perf_counter() - start, 1)
        result["rows"] += [{"mode": mode, "threshold": t, **_scored(streams, t, within), "seconds": seconds}
                           for t in sorted(thresholds)]
    return result


def rising_edges(checks: list[tuple[int, str, float]], threshold: float) -> list[tuple[int, str]]:
    """(frame, rule) of each check at which its rule started to hold, as `AlertChecker` fires."""
    holds, edges = {}, []
    for index, rule, probability in checks:
        now = probability >= threshold
        if now and not holds.get(rule, False):
            edges.append((index, rule))
        holds[rule] = now
    return edges


def _scored(streams, threshold: float, within: int) -> dict:
    checks, alerts, onsets = [], [], []
    for truth, stream_checks in streams:
        checks += [(p >= threshold, truth[rule][i]) for i, rule, p in stream_checks]
        fired = rising_edges(stream_checks, threshold)
        alerts += [truth[rule][i] for i, rule in fired]
        fired_at = set(fired)
        onsets += [_found(fired_at, rule, onset, truth[rule], within)
                   for rule in truth for onset in _onsets(truth[rule])]
    return {**_scores(checks), "alerts": len(alerts), "alert_precision": _mean(alerts),
            "alert_precision_interval": wilson(alerts), "onsets": len(onsets), "onset_recall": _mean(onsets),
            "onset_recall_interval": wilson(onsets)}


def _stream(cfg, model, scene, label: str):
    """Every check (frame, rule, probability of yes), in order, and every alert (frame, rule)
    of one stream."""
    vision, language = VisionStage(cfg, model), LanguageStage(cfg, model)
    checks, alerts = [], []
    bar = progress(scene.frames, label)
    for index in range(scene.frames):
        batch = vision.process(scene.frame(index), scene.stamp_ns(index))
        if batch is not None:
            language.ingest(batch)
            fired = language.check_alerts(batch)
            if language.alerts.last:
                checks += [(index, rule, p) for rule, p in language.alerts.last]
                language.alerts.last = []
            alerts += [(index, alert.rule) for alert in fired]
        bar.update()
    bar.close()
    return checks, alerts


def _onsets(truth: list[bool]) -> list[int]:
    return [i for i, holds in enumerate(truth) if holds and (i == 0 or not truth[i - 1])]


def _found(fired: set, rule: str, onset: int, truth: list[bool], within: int) -> int:
    """1 when the rule fired at a frame from the onset on, while the condition still held,
    within `within` frames."""
    end = onset
    while end < len(truth) and truth[end]:
        end += 1
    return int(any((i, rule) in fired for i in range(onset, min(end, onset + within + 1))))


def _scores(checks: list[tuple[bool, bool]]) -> dict:
    said_yes = [truth for said, truth in checks if said]
    held = [said for said, truth in checks if truth]
    right = [int(said == truth) for said, truth in checks]
    return {"checks": len(checks), "check_precision": _mean(said_yes), "check_precision_interval": wilson(said_yes),
            "check_recall": _mean(held), "check_recall_interval": wilson(held), "check_accuracy": _mean(right),
            "base_rate": _mean([truth for _, truth in checks])}


def _mean(values) -> float | None:
    values = [int(v) for v in values]
    return round(sum(values) / len(values), 4) if values else None


def markdown(result: dict) -> str:
    lines = [f"alert rules: {', '.join(result['rules'])} ({result['streams']} streams of {result['minutes']} min, "
             f"model {result['model']})", "",
             "| mode | threshold | checks | check precision | check recall | check accuracy | base rate | alerts | "
             "alert precision | onsets | onset recall | s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        def cell(key):
            value, interval = row[key], row.get(f"{key}_interval")
            if value is None:
                return "-"
            return f"{value:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else f"{value:.2f}"

        lines.append(f"| {row['mode']} | {row['threshold']} | {row['checks']} | {cell('check_precision')} | "
                     f"{cell('check_recall')} | {cell('check_accuracy')} | {cell('base_rate')} | {row['alerts']} | "
                     f"{cell('alert_precision')} | {row['onsets']} | {cell('onset_recall')} | {row['seconds']} |")
    return "\n".join(lines)
