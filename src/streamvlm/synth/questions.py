"""Questions about a synthetic stream, with the answers its ground truth gives.

Five kinds, each answered in a word or two so that scoring is an exact match:
- `now`: what is on screen in the newest frame ("What colour is the triangle now?");
- `attribute_at`: the colour or shape of the object that appeared at a given second;
- `count_since`: how many objects appeared after a given second;
- `left_when`: whether an object left, and at which second ("yes, at 41s" / "no");
- `needle`: when an object seen once, long ago, appeared ("at 37s").
An alert rule's check is a sixth, `alert`, asked as the alert checker asks it ("a red
object is visible? Answer yes or no."); it is trained and measured by `bench alerts`,
not by `bench qa`.
The first four look back at most `horizon` frames (the short range a streaming window
holds); needles ask about the first minute of a long stream.

Moments are whole seconds of stream time, counted from the first frame, the way the
evaluation model's time markers count them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from streamvlm.llm.alerts import ALERT_QUESTION
from streamvlm.synth.scene import COLOURS, SHAPES, SceneObject, SyntheticScene

SHORT_RANGE = ("now", "attribute_at", "count_since", "left_when")
KINDS = SHORT_RANGE + ("needle",)


@dataclass(frozen=True)
class Question:
    kind: str
    text: str
    answer: str
    frame: int  # asked once this frame has been ingested
    about: int = -1  # the frame the question refers to (-1: the newest)


def seconds(scene: SyntheticScene, index: int) -> int:
    return int(index / scene.fps)


def normalize(text: str) -> str:
    """Lower case, punctuation and articles dropped: "Yes, at 41s." == "yes at 41s"."""
    words = re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()
    return " ".join(w for w in words if w not in ("a", "an", "the"))


def is_correct(question: Question, reply: str) -> bool:
    """Exact match after `normalize`; a list ("red triangle, blue ellipse") in any order."""
    if "," in question.answer and not question.answer.startswith("yes"):
        return sorted(map(normalize, reply.split(","))) == sorted(map(normalize, question.answer.split(",")))
    return normalize(reply) == normalize(question.answer)


def describe(scene: SyntheticScene, index: int) -> str:
    """What is on screen: the objects' names in reading order of their centres, or "nothing"."""
    visible = sorted(scene.visible(index), key=lambda o: (scene.cell_of(o, index, (4, 4)), o.name))
    return ", ".join(o.name for o in visible) or "nothing"


def ask_now(scene: SyntheticScene, index: int, rng: np.random.Generator) -> Question | None:
    visible = scene.visible(index)
    forms = [("count", None), ("list", None)]
    for obj in visible:
        if sum(o.shape == obj.shape for o in visible) == 1:
            forms.append(("colour", obj))
        if sum(o.colour == obj.colour for o in visible) == 1:
            forms.append(("shape", obj))
    form, obj = forms[int(rng.integers(len(forms)))]
    if form == "list":
        return Question("now", "What is visible now?", describe(scene, index), index)
    if form == "count":
        return Question("now", "How many objects are visible now?", str(len(visible)), index)
    if form == "colour":
        return Question("now", f"What colour is the {obj.shape} now?", obj.colour, index)
    return Question("now", f"What shape is the {obj.colour} object now?", obj.shape, index)


def alert_rule(colour: str | None, shape: str | None) -> str:
    """The rule that holds while an object of this colour and/or shape is on screen."""
    if colour and shape:
        return f"a {colour} {shape} is visible"
    return f"a {colour} object is visible" if colour else f"a {shape} is visible"


def parse_rule(rule: str) -> tuple[str | None, str | None]:
    """(colour, shape) of a rule `alert_rule` writes; ValueError for any other."""
    words = rule.lower().split()
    if len(words) == 5 and words[0] == "a" and words[2] == "object" and words[3:] == ["is", "visible"]:
        if words[1] in COLOURS:
            return words[1], None
    if len(words) == 4 and words[0] == "a" and words[2:] == ["is", "visible"] and words[1] in SHAPES:
        return None, words[1]
    if len(words) == 5 and words[0] == "a" and words[3:] == ["is", "visible"]:
        if words[1] in COLOURS and words[2] in SHAPES:
            return words[1], words[2]
    raise ValueError(f"the synthetic scenes can check 'a COLOUR object is visible', 'a SHAPE is visible' or "
                     f"'a COLOUR SHAPE is visible' (colours {', '.join(COLOURS)}; shapes {', '.join(SHAPES)}); "
                     f"got {rule!r}")


def rule_holds(scene: SyntheticScene, index: int, colour: str | None, shape: str | None) -> bool:
    return any((colour is None or o.colour == colour) and (shape is None or o.shape == shape)
               for o in scene.visible(index))


def ask_alert(scene: SyntheticScene, index: int, rng: np.random.Generator) -> Question:
    """An alert rule's check at frame `index`: by colour, by shape or by both, drawn half the
    time from what is on screen, so that yes and no both come often."""
    visible = scene.visible(index)
    if visible and rng.random() < 0.5:
        obj = visible[int(rng.integers(len(visible)))]
        colour, shape = obj.colour, obj.shape
    else:
        colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
    form = int(rng.integers(3))
    colour, shape = (colour, None) if form == 0 else (None, shape) if form == 1 else (colour, shape)
    answer = "yes" if rule_holds(scene, index, colour, shape) else "no"
    return Question("alert", ALERT_QUESTION.format(rule=alert_rule(colour, shape)), answer, index)


def ask_attribute_at(scene: SyntheticScene, index: int, rng: np.random.Generator, horizon: int) -> Question | None:
    # The frame before the appearance must be in range too: "appeared" is a difference.
    recent = [o for o in scene.objects if index - horizon + 1 < o.appear <= index]
    if not recent:
        return None
    obj = recent[int(rng.integers(len(recent)))]
    t = seconds(scene, obj.appear)
    if rng.random() < 0.5:
        return Question("attribute_at", f"What colour was the object that appeared at {t}s?", obj.colour, index,
                        obj.appear)
    return Question("attribute_at", f"What shape was the object that appeared at {t}s?", obj.shape, index, obj.appear)


def ask_count_since(scene: SyntheticScene, index: int, rng: np.random.Generator, horizon: int) -> Question | None:
    if index < 1:
        return None
    since = int(rng.integers(max(0, index - horizon + 1), index))
    count = sum(since < o.appear <= index for o in scene.objects)
    return Question("count_since", f"How many objects appeared after {seconds(scene, since)}s?", str(count), index,
                    since)


def ask_left_when(scene: SyntheticScene, index: int, rng: np.random.Generator, horizon: int) -> Question | None:
    first = index - horizon + 1
    seen = [o for o in scene.objects if o.appear <= index and o.leave > first]  # on screen in range
    # Named by shape and colour, so the name must be unambiguous over the range.
    unique = [o for o in seen if sum(p.name == o.name for p in seen) == 1]
    gone = [o for o in unique if first < o.leave <= index]  # its last frame and the next in range
    staying = [o for o in unique if o.leave > index and o.appear > first]
    pool = gone if gone and (not staying or rng.random() < 0.5) else staying
    if not pool:
        return None
    obj = pool[int(rng.integers(len(pool)))]
    text = f"Did the {obj.name} leave, and when?"
    if obj.leave <= index:
        return Question("left_when", text, f"yes, at {seconds(scene, obj.leave)}s", index, obj.leave)
    return Question("left_when", text, "no", index)


def ask_appeared_when(scene: SyntheticScene, obj: SceneObject, index: int, kind: str = "needle") -> Question:
    return Question(kind, f"When did the {obj.name} appear?", f"at {seconds(scene, obj.appear)}s", index, obj.appear)


def short_range(scene: SyntheticScene, index: int, kind: str, rng: np.random.Generator,
                horizon: int) -> Question | None:
    if kind == "now":
        return ask_now(scene, index, rng)
    if kind == "attribute_at":
        return ask_attribute_at(scene, index, rng, horizon)
    if kind == "count_since":
        return ask_count_since(scene, index, rng, horizon)
    if kind == "left_when":
        return ask_left_when(scene, index, rng, horizon)
    if kind == "alert":
        return ask_alert(scene, index, rng)
    raise ValueError(f"unknown short-range kind {kind!r}; known: {SHORT_RANGE}")


def stream_questions(scene: SyntheticScene, seed: int, every: int = 10, horizon: int = 8,
                     short_until: int | None = None, needle_after: int = 600, needle_every: int = 300) -> list[Question]:
    """The questions a benchmark asks of one stream, in the order they are asked.

    Every `every` frames up to `short_until` (default: the whole stream), one short-range
    question, the kinds taken in turn. From frame `needle_after` on, every `needle_every`
    frames and at the last frame, one question about each needle.
    """
    rng = np.random.default_rng(seed)
    short_until = scene.frames if short_until is None else min(short_until, scene.frames)
    asked: list[Question] = []
    turn = 0
    for index in range(horizon, short_until, every):
        for attempt in range(len(SHORT_RANGE)):
            question = short_range(scene, index, SHORT_RANGE[(turn + attempt) % len(SHORT_RANGE)], rng, horizon)
            if question is not None:
                asked.append(question)
                break
        turn += 1
    needles = [o for o in scene.objects if o.needle]
    moments = sorted(set(range(needle_after, scene.frames, needle_every)) | {scene.frames - 1})
    for index in moments:
        if needles and index >= needle_after:
            asked.extend(ask_appeared_when(scene, obj, index) for obj in needles)
    return sorted(asked, key=lambda q: q.frame)
