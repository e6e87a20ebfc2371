"""Training contexts for the evaluation model, laid out exactly as LanguageStage streams them.

A context is what the streaming KV cache can hold when a question comes: the prompt's
sinks, optionally a few frames brought back from long-term memory (compressed: a quarter
of their tokens, their time marker whole), a window of recent frames, maybe an earlier
question and answer between them; or, for the full-attention reference, every frame since
the stream began. Several questions about the same context are trained at once, each
seeing the context but not the others (`pack`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from streamvlm.synth.questions import Question, ask_appeared_when, short_range
from streamvlm.synth.scene import SyntheticScene

# Counting and leaving need the most examples (they compare frames); finding when an
# object appeared is the needle skill.
KIND_WEIGHTS = {"now": 1.0, "attribute_at": 1.0, "count_since": 2.0, "left_when": 2.0, "appeared_when": 1.0,
                "alert": 1.0}
HORIZON = 8  # short-range questions look back this many frames (the eval config's window holds 12)
CELLS = 16  # tokens per frame
RECALLED = 16  # frames retrieval brings back at most (language.memory.top_k's default)
# Share of object cells that long-term memory's compression keeps (keep_ratio 0.25, the
# most-attended 4 of 16 cells): 302 of 346 on two evaluation streams with the v3 model.
CELL_KEPT = 0.87
# Share of the frames just after an appearance that come back with it: retrieval ranks
# them close to the first, and brings some.
RUN_KEPT = 0.5


@dataclass
class FrameRef:
    scene: int
    index: int
    keep: np.ndarray | None = None  # the cells kept when the frame was compressed (None: all)


@dataclass
class Context:
    """Pieces in stream order: FrameRef, or a Question already answered (a past turn)."""

    scene: int
    pieces: list = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)


class ContextMaker:
    """Draws training contexts. `progress` (0 at the first step, 1 at the last) lengthens the
    full-attention contexts as training goes: a curriculum from short to long (the streaming
    layouts stay short, as the KV budget keeps them)."""

    def __init__(self, scenes: dict[int, SyntheticScene], seed: int, reference_frames: tuple[int, int] = (64, 64)):
        self.scenes = scenes
        self.ids = sorted(scenes)
        self.rng = np.random.default_rng(seed)
        self.reference_frames = reference_frames  # longest full-attention context at the start, at the end

    def make(self, questions: int = 4, progress: float = 0.0, ends: int = 1) -> Context:
        """A context with up to `questions` questions, asked after `ends` different frames of it
        (each question sees the context up to its frame only, as a stream asked then would)."""
        rng = self.rng
        sid = self.ids[int(rng.integers(len(self.ids)))]
        scene = self.scenes[sid]
        first, last = self.reference_frames
        longest = min(scene.frames, round(first + (last - first) * progress))
        if rng.random() < 0.15:  # the reference's layout: everything since the first frame
            window = list(range(0, int(rng.integers(12, longest + 1))))
        else:
            n = int(rng.integers(6, 15))
            end = int(rng.integers(n + 8, scene.frames))
            window = list(range(end - n + 1, end + 1))
        context = Context(sid)
        recalled = self._recalled(scene, window[0]) if window[0] > 8 and rng.random() < 0.4 else []
        context.pieces = [FrameRef(sid, i, keep) for i, keep in recalled] + [FrameRef(sid, i) for i in window]
        if len(window) > 4 and rng.random() < 0.3:  # an earlier turn in the text window
            at = int(rng.integers(2, len(window) - 1))
            past = short_range(scene, window[at], self._kind(short=True), rng, min(HORIZON, at + 1))
            if past is not None:
                context.pieces.insert(len(recalled) + at + 1, past)
        # The newest frame always gets questions; the others are drawn among the later half.
        later = window[len(window) // 2:-1]
        picked = rng.choice(later, size=min(ends - 1, len(later)), replace=False) if later and ends > 1 else []
        moments = sorted({window[-1], *(int(i) for i in picked)})
        # The frames each moment's questions can see: those up to it, in stream order.
        refs = [p.index for p in context.pieces if isinstance(p, FrameRef)]
        shown_at = {end: refs[:refs.index(end) + 1] for end in moments}
        for number in range(questions):
            end = moments[number % len(moments)]
            shown = shown_at[end]
            horizon = min(HORIZON, end - window[0] + 1)
            kind = self._kind(short=False)
            if kind == "appeared_when":
                question = self._appeared_when(scene, shown, end)
            else:
                question = short_range(scene, end, kind, rng, horizon)
            if question is not None and (question.text, end) not in {(q.text, q.frame) for q in context.questions}:
                context.questions.append(question)
        return context

    def _kind(self, short: bool) -> str:
        kinds = [k for k in KIND_WEIGHTS if not (short and k == "appeared_when")]
        weights = np.array([KIND_WEIGHTS[k] for k in kinds])
        return kinds[int(self.rng.choice(len(kinds), p=weights / weights.sum()))]

    def _recalled(self, scene: SyntheticScene, before: int) -> list[tuple[int, np.ndarray]]:
        """Frames long-term memory might bring back, laid out as retrieval brings them: an
        earlier object's first frame and some of the frames after it (so a question can ask
        when it appeared) among up to RECALLED frames in all, the others mostly moments when
        other objects appeared, each with some of its next frames too, and some at random;
        each compressed to 4 cells, an object's cell kept as often as the attention-ranked
        compression keeps it.

        The asked object's frames are not one unbroken run while the others' are single
        frames: with that layout (recipe v4) the start of the only run gave the answer away
        without reading which object a frame shows. On real streams, where retrieval brings
        runs of other objects too and sometimes a needle's first frame alone, v4 answered 3 of
        30 needles right though it attended to the needle's frame for 22; that shortcut is
        the likeliest cause found, not a proven one."""
        rng = self.rng
        earlier = [o for o in scene.objects if o.appear < before - 2]
        frames = set()
        if earlier:
            obj = earlier[int(rng.integers(len(earlier)))]
            frames.add(obj.appear)
            frames.update(i for i in range(obj.appear + 1, min(obj.leave, obj.appear + 6, before - 1))
                          if rng.random() < RUN_KEPT)
        total = int(rng.integers(len(frames) + 1, RECALLED + 1))
        moments = sorted({o.appear for o in earlier} - frames)
        while len(frames) < min(total, before - 1):
            if moments and rng.random() < 0.6:
                moment = moments.pop(int(rng.integers(len(moments))))
                frames.add(moment)
                for after in (moment + 1, moment + 2):
                    if len(frames) < total and after < before - 1 and rng.random() < RUN_KEPT:
                        frames.add(after)
            else:
                frames.add(int(rng.integers(0, before - 1)))
        recalled = []
        for index in sorted(frames):
            cells = [c for c in (scene.cell_of(o, index, (4, 4)) for o in scene.visible(index))
                     if rng.random() < CELL_KEPT]
            rest = [c for c in rng.permutation(CELLS) if c not in cells]
            recalled.append((index, np.sort(np.array((cells + rest)[:4]))))
        return recalled

    def _appeared_when(self, scene: SyntheticScene, shown: list[int], end: int) -> Question | None:
        """'When did X appear?' for an object whose first frame is in the context and whose
        name is unique among the objects the context shows."""
        present = set(shown)
        seen = [o for o in scene.objects if any(o.visible(i) for i in present)]
        unique = [o for o in seen if o.appear in present and sum(p.name == o.name for p in seen) == 1]
        if not unique:
            return None
        obj = unique[int(self.rng.integers(len(unique)))]
        return ask_appeared_when(scene, obj, end, kind="appeared_when")


@dataclass
class Packed:
    embeds: torch.Tensor  # [T, D]
    positions: torch.Tensor  # [T]
    mask: torch.Tensor  # [T, T] bool, True where attention is allowed
    targets: torch.Tensor  # [T] the next token id to predict at each position, -100 where none


def pack(context: Context, frame_tokens, embed, tokenize, prompt, newline: torch.Tensor,
         stop_id: int) -> Packed:
    """The context then each question as its own block: [frame end][question][answer][stop].

    frame_tokens(FrameRef) -> [16, D] (kept cells only when compressed); embed(ids) -> [n, D];
    tokenize(text) -> ids [n]. Each block attends to itself and to the context up to the end
    of the frame it was asked after (`Question.frame`), at the positions that follow it.
    """
    parts = [embed(tokenize(prompt.stream_prefix))]
    filled = parts[0].shape[0]  # context tokens so far
    frames_since_turn = False
    frame_end: dict[int, int] = {}  # frame index -> context length once it is in
    for piece in context.pieces:
        if isinstance(piece, FrameRef):
            added = [embed(tokenize(prompt.marker(seconds_of(piece)))), frame_tokens(piece)]
            frames_since_turn = True
        else:  # an earlier question and its answer
            text = prompt.question_prefix + piece.text + prompt.question_suffix
            # Apart, as LanguageStage feeds them: the generated answer, then the separator.
            added = ([newline[None]] if frames_since_turn else []) + [
                embed(tokenize(text)), embed(torch.cat([tokenize(piece.answer), tokenize(prompt.turn_separator)]))]
            frames_since_turn = False
        parts += added
        filled += sum(t.shape[0] for t in added)
        if isinstance(piece, FrameRef):
            frame_end[piece.index] = filled
    context_embeds = torch.cat(parts)
    length = context_embeds.shape[0]
    blocks, targets, positions = [context_embeds], [torch.full((length,), -100)], [torch.arange(length)]
    spans = []
    for question in context.questions:
        q_ids = tokenize(prompt.question_prefix + question.text + prompt.question_suffix)
        a_ids = torch.cat([tokenize(question.answer), torch.tensor([stop_id])])
        block = torch.cat([newline[None], embed(q_ids), embed(a_ids[:-1])])
        target = torch.full((block.shape[0],), -100)
        target[-len(a_ids):] = a_ids  # the last question token predicts the first answer token
        seen = frame_end.get(question.frame, length)
        spans.append((sum(b.shape[0] for b in blocks), block.shape[0], seen))
        blocks.append(block)
        targets.append(target)
        positions.append(torch.arange(seen, seen + block.shape[0]))
    total = sum(b.shape[0] for b in blocks)
    mask = torch.zeros(total, total, dtype=torch.bool)
    mask[:length, :length] = torch.ones(length, length, dtype=torch.bool).tril()
    for start, size, seen in spans:
        mask[start:start + size, :seen] = True
        mask[start:start + size, start:start + size] = torch.ones(size, size, dtype=torch.bool).tril()
    return Packed(torch.cat(blocks), torch.cat(positions), mask, torch.cat(targets))


def seconds_of(ref: FrameRef) -> int:
    # Markers count seconds from the stream's first frame; training scenes run at 1 fps.
    return ref.index


