"""Alerts: natural-language conditions checked against the stream as it changes.

A rule ("a red object is visible") is asked as a yes/no question over the context as it
is (`ALERT_QUESTION`); only the first answer token's logits are read, the yes tokens
against the no tokens, and the question is then taken back out of the context
(`ContextEngine.mark` / `rollback`), so checking costs one prefill of a few tokens per
rule and leaves the stream's context as it was. Checks run when novelty says something
changed since the last one (the largest share of changed tokens among the frames since),
at most every `interval_s` of stream time, and a rule fires when it starts to hold (a
rising edge: "tell me when a person enters", not once a check while one stands there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from streamvlm.fields import check, setting
from streamvlm.types import Alert, TokenBatch

# How a rule is asked. The evaluation model is trained on this form (training/samples.py).
ALERT_QUESTION = "{rule}? Answer yes or no."
MAX_RULES = 32
MAX_RULE_CHARS = 200


@dataclass(frozen=True)
class AlertSettings:
    """`language.alerts.*`: the rules and when they are checked."""

    rules: tuple = setting((), "natural-language conditions ('a person is visible'), each checked as the stream "
                           "changes; a rule that starts to hold is published on alerts")
    interval_s: float = setting(2.0, "at most one check of the rules per this many seconds of stream",
                                range=(0.0, 86400.0))
    novelty: float = setting(0.05, "check only when a frame since the last check changed at least this share of "
                             "its tokens (0: at every interval)", range=(0.0, 1.0))
    # 0.7, measured (`streamvlm bench alerts`, the evaluation model, 4 streams): alert
    # precision 0.73 against 0.54 at 0.5 with the same onsets found (0.84; README, Alerts);
    # 0.9 fires more often again, on a yes that flickers while the condition lasts.
    threshold: float = setting(0.7, "a rule holds when the model's probability of yes (yes against no) reaches this",
                               range=(0.0, 1.0))

    def __post_init__(self):
        check(self)
        check_rules(self.rules)


def rule_error(rule: object) -> str:
    """Why `rule` cannot be a rule; "" when it can."""
    if not isinstance(rule, str) or not rule.strip():
        return "an alert rule is empty"
    if len(rule) > MAX_RULE_CHARS:
        return f"an alert rule has {len(rule)} characters; the limit is {MAX_RULE_CHARS}"
    if "\x00" in rule or "\ufffd" in rule:
        return "an alert rule is not valid text"
    try:
        rule.encode("utf-8")
    except UnicodeEncodeError:
        return "an alert rule is not valid UTF-8"
    return ""


def check_rules(rules) -> None:
    for rule in rules:
        error = rule_error(rule)
        if error:
            raise ValueError(f"{error}: {rule!r}")
    if len(set(rules)) != len(rules):
        raise ValueError("an alert rule is given twice")
    if len(rules) > MAX_RULES:
        raise ValueError(f"{len(rules)} alert rules; at most {MAX_RULES}")


def yes_no_ids(tokenizer) -> tuple[list[int], list[int]]:
    """The first token of each way an answer can start with yes, and with no: the first
    token of the word that is more than a space (a tokenizer may split " yes" into " ", "yes"),
    and none that could start both."""
    def first(words) -> set[int]:
        ids = set()
        for word in words:
            tokens = tokenizer(word, add_special_tokens=False)["input_ids"]
            ids.add(next(t for t in tokens if tokenizer.decode([t]).strip()))
        return ids

    yes, no = first(("yes", "Yes", " yes", " Yes")), first(("no", "No", " no", " No"))
    return sorted(yes - no), sorted(no - yes)


class AlertChecker:
    """When to check, and which checks fire. `stage` is a LanguageStage (its `yes_probability`)."""

    def __init__(self, settings: AlertSettings):
        self.settings = settings
        self._last_check_ns: int | None = None
        self._novelty = 0.0  # the largest novelty since the last check
        self._holds: dict[str, bool] = {}
        self.checks = 0  # rule checks run (one per rule per check)
        self.fired = 0
        self.last: list[tuple[str, float]] = []  # (rule, probability of yes) of the last check run

    @property
    def settings(self) -> AlertSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: AlertSettings) -> None:
        self._settings = settings
        self._holds = {rule: held for rule, held in getattr(self, "_holds", {}).items() if rule in settings.rules}

    def reset(self) -> None:
        """A new stream: nothing holds yet."""
        self._last_check_ns, self._novelty, self._holds = None, 0.0, {}

    def after_frame(self, stage, batch: TokenBatch) -> list[Alert]:
        """Check the rules if due after this frame went into `stage`'s context; the alerts
        that fired (rules that started to hold)."""
        s = self._settings
        self._novelty = max(self._novelty, batch.novelty)
        if not s.rules or self._novelty < s.novelty:
            return []
        if self._last_check_ns is not None and batch.stamp_ns - self._last_check_ns < s.interval_s * 1e9:
            return []
        self._last_check_ns, self._novelty = batch.stamp_ns, 0.0
        fired, self.last = [], []
        for rule in s.rules:
            probability, evidence = stage.yes_probability(ALERT_QUESTION.format(rule=rule))
            self.checks += 1
            self.last.append((rule, probability))
            holds = probability >= s.threshold
            if holds and not self._holds.get(rule, False):
                self.fired += 1
                where = f"{batch.camera} " if batch.camera else ""
                text = f"{rule} ({where}{_clock(stage.stream_seconds(batch.stamp_ns))}, p={probability:.2f})"
                fired.append(Alert(rule, batch.camera, batch.stamp_ns, probability, text,
                                   [t for t, _ in evidence], [c for _, c in evidence]))
            self._holds[rule] = holds
        return fired

    def status(self) -> dict[str, object]:
        return {"alert rules": len(self._settings.rules), "alert checks": self.checks, "alerts fired": self.fired}


def _clock(seconds: float) -> str:
    minutes, rest = divmod(int(math.floor(seconds)), 60)
    return f"{minutes}:{rest:02d}"
