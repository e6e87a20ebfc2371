"""Questions about synthetic streams: every answer agrees with what the frames show."""

from __future__ import annotations

import collections

import numpy as np

from streamvlm.synth import evaluation_scene
from streamvlm.synth.questions import (SHORT_RANGE, Question, describe, is_correct, normalize, seconds,
                                       short_range, stream_questions)


def _recount(scene, question: Question) -> str:
    """The answer recomputed from the per-frame visible sets alone (not from appear/leave)."""
    index = question.frame
    shown = [collections.Counter(o.name for o in scene.visible(i)) for i in range(index + 1)]
    text = question.text
    if text.startswith("How many objects appeared after"):
        since = int(text.split("after ")[1].rstrip("s?"))
        # An appearance is one more of a name on screen than a frame before.
        return str(sum((shown[i] - shown[i - 1]).total() for i in range(since + 1, index + 1)))
    if text.startswith("How many objects are visible"):
        return str(shown[index].total())
    if text.startswith("Did the"):
        name = text[len("Did the "):-len(" leave, and when?")]
        if name in shown[index]:
            return "no"
        last = max(i for i in range(index + 1) if name in shown[i])
        return f"yes, at {last + 1}s"
    if text.startswith("What is visible"):
        return ", ".join(sorted(shown[index].elements())) or "nothing"
    return question.answer  # attribute questions are checked in the test below


def test_answers_agree_with_what_the_frames_show():
    scene = evaluation_scene(7, 300)
    rng = np.random.default_rng(0)
    kinds = collections.Counter()
    for index in range(8, 300, 3):
        for kind in SHORT_RANGE:
            question = short_range(scene, index, kind, rng, 8)
            if question is None:
                continue
            kinds[kind] += 1
            expected = _recount(scene, question)
            if question.text.startswith("What is visible"):
                assert ", ".join(sorted(question.answer.split(", "))) == expected
            else:
                assert question.answer == expected, question
            if question.kind == "attribute_at":
                new = [o for o in scene.visible(question.about) if not o.visible(question.about - 1)]
                assert len(new) == 1 and question.answer in (new[0].colour, new[0].shape)
    assert min(kinds.values()) > 20 and set(kinds) == set(SHORT_RANGE)


def test_a_stream_asks_every_kind_and_needles_late():
    scene = evaluation_scene(1, 1200)
    asked = stream_questions(scene, 1, every=5, short_until=240, needle_after=600, needle_every=300)
    kinds = collections.Counter(q.kind for q in asked)
    assert set(kinds) == {"now", "attribute_at", "count_since", "left_when", "needle"}
    needles = [q for q in asked if q.kind == "needle"]
    assert all(q.frame >= 600 and q.about < 60 for q in needles)
    assert all(q.frame < 240 for q in asked if q.kind != "needle")
    assert asked == stream_questions(scene, 1, every=5, short_until=240, needle_after=600, needle_every=300)


def test_scoring_forgives_case_punctuation_articles_and_list_order():
    q = Question("left_when", "Did the red triangle leave, and when?", "yes, at 41s", 50)
    assert is_correct(q, "Yes, at 41s.") and not is_correct(q, "yes, at 40s")
    listing = Question("now", "What is visible now?", "red triangle, blue ellipse", 9)
    assert is_correct(listing, "a blue ellipse, a red triangle") and not is_correct(listing, "red triangle")
    assert normalize("The  RED one!") == "red one"
    scene = evaluation_scene(2, 60)
    assert describe(scene, 0) == "nothing" and seconds(scene, 37) == 37


def test_alert_checks_are_asked_as_the_checker_asks_them_and_answered_by_the_truth():
    import numpy as np

    from streamvlm.llm.alerts import ALERT_QUESTION
    from streamvlm.synth.questions import alert_rule, ask_alert, parse_rule, rule_holds
    from streamvlm.synth.scene import evaluation_scene

    scene = evaluation_scene(3, 120)
    rng = np.random.default_rng(0)
    answers = []
    for index in range(0, 120, 2):
        question = ask_alert(scene, index, rng)
        rule = question.text.removesuffix(ALERT_QUESTION.format(rule=""))
        assert question.text == ALERT_QUESTION.format(rule=rule) and alert_rule(*parse_rule(rule)) == rule
        assert question.answer == ("yes" if rule_holds(scene, index, *parse_rule(rule)) else "no")
        answers.append(question.answer)
    assert 0.3 < answers.count("yes") / len(answers) < 0.7  # both answers common
