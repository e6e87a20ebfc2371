"""The evaluation model's training contexts: several questions packed into one forward pass,
each asked after its own frame, must give what asking each alone would."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from streamvlm.synth import evaluation_scene
from streamvlm.training.samples import ContextMaker, FrameRef, pack

WIDTH = 32


def _pieces():
    """A tokenizer, embedding, prompt and frame tokens small enough to run a random LM on."""
    table = torch.randn(256, WIDTH, generator=torch.Generator().manual_seed(0))
    tokenize = lambda text: torch.tensor([ord(c) % 256 for c in text[:6]] or [0])  # noqa: E731
    embed = lambda ids: table[ids]  # noqa: E731
    prompt = SimpleNamespace(stream_prefix="<sys>", question_prefix="<q>", question_suffix="</q>",
                             turn_separator="|", marker=lambda s: f" {s}s")
    frame_tokens = lambda ref: table[torch.arange(16) + ref.index % 200][  # noqa: E731
        slice(None) if ref.keep is None else torch.as_tensor(ref.keep)]
    return tokenize, embed, prompt, frame_tokens, table[10]


def test_questions_asked_after_different_frames_each_see_only_the_stream_up_to_theirs():
    scenes = {7: evaluation_scene(7, 200)}
    maker = ContextMaker(scenes, seed=3)
    tokenize, embed, prompt, frame_tokens, newline = _pieces()
    contexts = [maker.make(questions=12, progress=1.0, ends=4) for _ in range(20)]
    assert any(len({q.frame for q in c.questions}) > 1 for c in contexts), "no context asked after several frames"
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    lm = LlamaModel(LlamaConfig(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=256)).eval()
    checked = 0
    for context in contexts[:6]:
        packed = pack(context, frame_tokens, embed, tokenize, prompt, newline, stop_id=1)
        allowed = torch.zeros(packed.mask.shape).masked_fill(~packed.mask, float("-inf"))[None, None]
        with torch.no_grad():
            together = lm(inputs_embeds=packed.embeds[None], position_ids=packed.positions[None],
                          attention_mask=allowed).last_hidden_state[0]
        answered = packed.targets != -100
        for number, question in enumerate(context.questions):
            # The same question alone: the stream up to its frame, then its block.
            alone = type(context)(context.scene, _up_to(context.pieces, question.frame), [question])
            single = pack(alone, frame_tokens, embed, tokenize, prompt, newline, stop_id=1)
            with torch.no_grad():
                hidden = lm(inputs_embeds=single.embeds[None]).last_hidden_state[0]
            mine = _block_rows(packed, answered, context, number, tokenize)
            torch.testing.assert_close(together[mine], hidden[single.targets != -100], atol=1e-5, rtol=1e-4)
            assert torch.equal(packed.targets[mine], single.targets[single.targets != -100])
            checked += 1
    assert checked >= 12


def test_the_curriculum_lengthens_full_attention_contexts():
    scenes = {7: evaluation_scene(7, 400)}
    longest = []
    for progress in (0.0, 1.0):
        maker = ContextMaker(scenes, seed=5, reference_frames=(20, 300))
        contexts = [maker.make(4, progress) for _ in range(200)]
        full = [refs for refs in ([p.index for p in c.pieces if isinstance(p, FrameRef)] for c in contexts)
                if refs == list(range(len(refs)))]  # every frame since the first: the reference's layout
        longest.append(max(map(len, full)))
    assert longest[0] <= 20 < 100 < longest[1] <= 300


def _up_to(pieces, frame: int) -> list:
    cut = next(k for k, p in enumerate(pieces) if isinstance(p, FrameRef) and p.index == frame) + 1
    return pieces[:cut]


def _block_rows(packed, answered: torch.Tensor, context, number: int, tokenize) -> torch.Tensor:
    """Rows of the packed sequence that predict question `number`'s answer tokens."""
    rows = np.flatnonzero(answered.numpy())
    sizes = [len(tokenize(q.answer)) + 1 for q in context.questions]
    first = sum(sizes[:number])
    return torch.as_tensor(rows[first:first + sizes[number]])


def test_recalled_frames_look_like_what_retrieval_brings_back():
    """Up to top_k frames before the window, in time order, compressed to 4 cells: an earlier
    object's first frame among others, mostly moments when other objects appeared; runs of
    frames after an appearance come for the asked object and the others alike, so that the
    only run cannot tell which object a question is about."""
    from streamvlm.training.samples import RECALLED

    scene = evaluation_scene(5, 400)
    maker = ContextMaker({5: scene}, seed=1)
    appear_moments = {o.appear for o in scene.objects}
    sizes, at_moments, drawn, runs = [], 0, 0, []
    for before in (30, 120, 300) * 20:
        recalled = maker._recalled(scene, before)
        indices = [i for i, _ in recalled]
        assert indices == sorted(set(indices)) and all(0 <= i < before - 1 for i in indices)
        assert all(len(keep) == 4 and len(set(keep.tolist())) == 4 for _, keep in recalled)
        assert any(o.appear in indices for o in scene.objects)  # some object from its first frame on
        runs.append(sum(o.appear in indices and o.appear + 1 in indices for o in scene.objects))
        sizes.append(len(recalled))
        at_moments += sum(i in appear_moments for i in indices)
        drawn += len(indices)
    assert max(sizes) <= RECALLED and max(sizes) > 10 and min(sizes) < max(sizes)
    assert at_moments / drawn > 0.4  # a uniform draw gives about 0.16; an object's later frames are not moments
    assert sum(r == 0 for r in runs) >= 3 and sum(r >= 2 for r in runs) >= 20, runs
