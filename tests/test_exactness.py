"""The streaming pipeline is exactly the model's own offline inference.

Frames fed one at a time (each prefilled into the KV cache as it arrives) and then a
question must give the same logits and the same greedy answer as one transformers
forward / generate over all frames and the prompt built by the model's chat template.
This is the reference that every later cache, pruning and eviction is measured against.
"""

from __future__ import annotations

import pytest
import torch

from streamvlm.config import PipelineConfig
from streamvlm.pipeline import StreamingVLM

# float32 on CPU; chunked prefill vs one forward differs only by summation order.
ATOL = 1e-5
QUESTION = "What is happening?"
NEW_TOKENS = 8


# Both engines: the streaming one (default budget, nothing evicted in these short
# streams) and the full-attention reference (budget 0).
BUDGETS = pytest.mark.parametrize("budget", [8192, 0], ids=["streaming", "full"])

# The pruner off, and each pruner mode in its keep-all setting (which must change nothing).
PRUNING = pytest.mark.parametrize("pruning", [
    {"mode": "off"},
    {"mode": "stc", "keep_tokens": 196},
    {"mode": "adaptive", "min_tokens": 196, "keep_tokens": 196},
], ids=["unpruned", "stc-keep-all", "adaptive-keep-all"])


def _pipeline(model, budget: int = 8192, pruning: dict | None = None) -> StreamingVLM:
    cfg = PipelineConfig().replace(
        model={"name": "tiny"},
        vision={"fps": 0.0, "delta.mode": "off", "prune": pruning or {"mode": "off"}},  # the full ViT, as HF runs it
        language={"caption_interval_s": 0.0, "cache.budget_tokens": budget},
    )
    return StreamingVLM(cfg, model)


def _hf_prompt_ids(model, n_frames: int, question: str) -> torch.Tensor:
    """Prompt ids exactly as the processor builds them: the chat template, <video> expanded."""
    tokenizer = model.tokenizer
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}],
        tokenize=False, add_generation_prompt=True,
    )
    video_tokens = n_frames * 196 + 1  # 14x14 pooled tokens per frame, one newline per video
    text = text.replace("<video>", "<video>" * video_tokens)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]


def _pixels(model, frames) -> torch.Tensor:
    return torch.cat([model.preprocess(f) for f in frames])[None]  # [1, F, 3, 384, 384]


def _assert_meaningful_greedy(logits: torch.Tensor) -> None:
    # A greedy comparison proves something only if top-1 beats top-2 by more than the tolerance.
    top2 = torch.topk(logits, 2).values
    assert float(top2[0] - top2[1]) > 10 * ATOL


@PRUNING
@BUDGETS
def test_streaming_equals_offline_forward_and_generate(tiny_model, frames, budget, pruning):
    vlm = _pipeline(tiny_model, budget, pruning)
    for i, frame in enumerate(frames):
        assert vlm.push(frame, (i + 1) * 10**9) is None  # captions are off
    answer = vlm.ask(QUESTION, max_new_tokens=NEW_TOKENS)

    ids = _hf_prompt_ids(tiny_model, len(frames), QUESTION)
    pixels = _pixels(tiny_model, frames)
    with torch.inference_mode():
        reference = tiny_model.hf_model(input_ids=ids, pixel_values_videos=pixels).logits[0, -1].float()
        generated = tiny_model.hf_model.generate(
            input_ids=ids, pixel_values_videos=pixels, max_new_tokens=NEW_TOKENS, do_sample=False
        )[0, ids.shape[1]:].tolist()

    torch.testing.assert_close(answer.first_logits, reference, atol=ATOL, rtol=0)
    _assert_meaningful_greedy(reference)
    assert answer.token_ids == generated
    assert answer.success and answer.evidence_ns == [10**9, 2 * 10**9, 3 * 10**9]


@BUDGETS
def test_second_turn_continues_the_same_context(tiny_model, frames, budget):
    """Frames after an answer open a new user turn; a second question then sees everything."""
    vlm = _pipeline(tiny_model, budget)
    first, second = frames[:2], frames[1:]
    for i, frame in enumerate(first):
        vlm.push(frame, (i + 1) * 10**9)
    answer1 = vlm.ask(QUESTION, max_new_tokens=NEW_TOKENS)
    for i, frame in enumerate(second):
        vlm.push(frame, (i + 10) * 10**9)
    answer2 = vlm.ask("And now?", max_new_tokens=NEW_TOKENS)

    # The same chat as one sequence: turn 1, the answer, turn 2 (two videos of two frames).
    prompt = tiny_model.prompt
    tok = lambda text: tiny_model.tokenize(text)[0].tolist()  # noqa: E731
    video = [tiny_model.hf_model.config.video_token_index] * (2 * 196 + 1)
    answer_ids = answer1.token_ids[:-1] if answer1.token_ids[-1] in prompt.stop_token_ids else answer1.token_ids
    ids = (tok(prompt.stream_prefix) + video + tok(prompt.question_prefix + QUESTION + prompt.question_suffix)
           + answer_ids + tok(prompt.turn_separator) + video
           + tok(prompt.question_prefix + "And now?" + prompt.question_suffix))
    pixels = torch.cat([_pixels(tiny_model, first), _pixels(tiny_model, second)])  # [2, 2, 3, H, W]
    with torch.inference_mode():
        reference = tiny_model.hf_model(input_ids=torch.tensor([ids]), pixel_values_videos=pixels)
    torch.testing.assert_close(answer2.first_logits, reference.logits[0, -1].float(), atol=ATOL, rtol=0)
    assert answer2.evidence_ns == [10**9, 2 * 10**9, 10 * 10**9, 11 * 10**9]


def test_prompt_pieces_rebuild_the_chat_template(tiny_model):
    prompt = tiny_model.prompt
    render = lambda messages: tiny_model.tokenizer.apply_chat_template(  # noqa: E731
        messages, tokenize=False, add_generation_prompt=True)
    user = lambda q: {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": q}]}  # noqa: E731
    two_turns = render([user("Q1"), {"role": "assistant", "content": [{"type": "text", "text": "A1"}]}, user("Q2")])
    rebuilt = (prompt.stream_prefix + "<video>" + prompt.question_prefix + "Q1" + prompt.question_suffix
               + "A1" + prompt.turn_separator + "<video>" + prompt.question_prefix + "Q2" + prompt.question_suffix)
    assert rebuilt == two_turns
