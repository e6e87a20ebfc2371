"""Alerts without ROS: the yes/no check leaves the context exactly as it was, reads the same
probability an asked question's first logits give, and fires on rising edges, when novelty
and the interval allow."""

from __future__ import annotations

import pytest
import torch

from streamvlm.config import PipelineConfig
from streamvlm.llm.alerts import ALERT_QUESTION, MAX_RULES, AlertChecker, AlertSettings, yes_no_ids
from streamvlm.llm.stage import LanguageStage
from streamvlm.pipeline import StreamingVLM
from streamvlm.types import TokenBatch

S = 1_000_000_000


def _cfg(**language) -> PipelineConfig:
    return PipelineConfig().replace(model={"name": "tiny"}, vision={"fps": 1.0},
                                    language={"caption_interval_s": 0.0, "max_new_tokens": 4, **language})


@pytest.mark.parametrize("budget", [0, 600], ids=["reference", "streaming"])
def test_a_check_leaves_the_context_exactly_as_it_was(tiny_model, frames, budget):
    """Two streams fed the same frames, one checked between every two frames: the same
    context length, and the same answer and first logits at the end."""
    cfg = _cfg(cache={"budget_tokens": budget, "vision_window_frames": 3})
    checked, plain = StreamingVLM(cfg, tiny_model), StreamingVLM(cfg, tiny_model)
    for second in range(6):
        for vlm in (checked, plain):
            vlm.push(frames[second % 3], second * S)
        probability, evidence = checked.language.yes_probability("Is anything red? Answer yes or no.")
        assert 0.0 <= probability <= 1.0 and [t for t, _ in evidence] == plain.language.frame_stamps
        assert checked.language.context_tokens == plain.language.context_tokens
    one, other = checked.ask("What is there?"), plain.ask("What is there?")
    assert one.token_ids == other.token_ids
    torch.testing.assert_close(one.first_logits, other.first_logits, rtol=1e-5, atol=1e-5)


def test_the_probability_is_the_asked_questions_first_token_yes_against_no(tiny_model, frames):
    stage = LanguageStage(_cfg(cache={"budget_tokens": 0}), tiny_model)
    vlm = StreamingVLM(stage.cfg, tiny_model)
    vlm.language = stage
    for second in range(3):
        vlm.push(frames[second], second * S)
    question = ALERT_QUESTION.format(rule="a red object is visible")
    probability, _ = stage.yes_probability(question)
    logits = stage.ask(question, max_new_tokens=1, recall=False).first_logits
    yes, no = yes_no_ids(tiny_model.tokenizer)
    assert yes and no and not set(yes) & set(no)
    expected = torch.stack([logits[yes].logsumexp(0), logits[no].logsumexp(0)]).softmax(0)[0]
    assert probability == pytest.approx(float(expected), abs=1e-5)


class _Scripted:
    """A stage whose yes probability for each rule follows a script."""

    def __init__(self, script):
        self.script, self.asked = script, []

    def yes_probability(self, question):
        self.asked.append(question)
        rule = question.removesuffix("? Answer yes or no.")
        return self.script[rule].pop(0), [(7 * S, "front")]

    def stream_seconds(self, stamp_ns):
        return stamp_ns / S


def _batch(second: float, novelty: float = 1.0, camera: str = "front") -> TokenBatch:
    return TokenBatch(int(second * S), 0, torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), (1, 1),
                      novelty=novelty, camera=camera)


def test_rules_fire_when_they_start_to_hold_at_most_every_interval_and_only_on_change():
    checker = AlertChecker(AlertSettings(rules=("a person is visible",), interval_s=2.0, novelty=0.1))
    stage = _Scripted({"a person is visible": [0.2, 0.9, 0.8, 0.3, 0.7]})
    fired = []
    for second, novelty in [(0, 1.0), (1, 1.0), (2, 0.05), (3, 0.5), (5, 0.5), (6, 0.5), (7, 0.5), (9, 0.5),
                            (11, 0.0), (12, 0.0)]:
        fired += [(second, a) for a in checker.after_frame(stage, _batch(second, novelty))]
    # Checks: 0 (no); 2 (yes: fires; its own novelty is small, but 1's change since the last
    # check counts); 5 (yes: still holds); 7 (no); 9 (yes: fires). 1, 3, 6: within 2 s of a
    # check; 11 and 12: nothing changed.
    assert checker.checks == 5 and [s for s, _ in fired] == [2, 9]
    alert = fired[0][1]
    assert alert.rule == "a person is visible" and alert.camera == "front" and alert.probability == 0.9
    assert alert.evidence_cameras == ["front"] and "0:02" in alert.text and "front" in alert.text
    # A rule taken away is forgotten; one added starts from "does not hold".
    checker.settings = AlertSettings(rules=("a car is visible",), interval_s=0.0, novelty=0.0)
    stage.script["a car is visible"] = [0.75]
    assert [a.rule for a in checker.after_frame(stage, _batch(13))] == ["a car is visible"]
    assert checker.status() == {"alert rules": 1, "alert checks": 6, "alerts fired": 3}


def test_bad_rules_are_refused_with_reasons():
    for rules, reason in [(("",), "empty"), (("x" * 201,), "limit"), (("a\x00b",), "not valid"),
                          (("a", "a"), "twice"), (tuple(f"rule {i}" for i in range(MAX_RULES + 1)), "at most")]:
        with pytest.raises(ValueError, match=reason):
            AlertSettings(rules=rules)
    with pytest.raises(ValueError, match="empty"):
        _cfg(alerts={"rules": ["a person is visible", " "]})


def test_the_pipeline_reports_alerts_as_they_fire(tiny_model, frames):
    vlm = StreamingVLM(_cfg(alerts={"rules": ["anything at all"], "interval_s": 0.0, "threshold": 0.0}), tiny_model)
    fired = []
    vlm.on_alert = fired.append
    for second in range(3):
        vlm.push(frames[second], second * S)
    assert len(fired) == 1 and fired[0].stamp_ns == 0  # threshold 0: holds from the first check on
    assert vlm.language.alerts.checks == 3


def test_an_alert_counts_stream_time_from_a_first_stamp_of_zero(tiny_model, frames, capsys):
    """Simulated clocks and generated bags start at stamp 0: a first stamp that is zero is
    still the stream's start, in the alert's text and in replay's report."""
    from streamvlm.cli import _Reporter
    from streamvlm.types import Alert

    vlm = StreamingVLM(_cfg(), tiny_model)
    for second in range(3):
        vlm.push(frames[second], second * S)
    assert vlm.language.stream_seconds(2 * S) == 2.0
    _Reporter(as_json=False, out=None).alert(Alert("a rule", "", 2 * S, 0.9, "a rule (0:02, p=0.90)"), 0)
    assert "[    2.00s] alert" in capsys.readouterr().out
