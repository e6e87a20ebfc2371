"""SmolVLM2 (Idefics3 architecture) streamed equals transformers' SmolVLM over the same frames.

The reference prompt is the one SmolVLM2's processor builds for a video without splitting
("\\nFrame from MM:SS:" + <fake_token_around_image><global-img> + image tokens +
<fake_token_around_image> per frame, a blank line, the question), minus its opening
sentence, which a live stream cannot write (see models/smolvlm.py); it is built here by hand
because the processor's video path needs num2words, which we do not install.
"""

from __future__ import annotations

import pytest
import torch

from streamvlm.config import PipelineConfig
from streamvlm.models.smolvlm import FRAMES_END, chat_template
from streamvlm.pipeline import StreamingVLM
from streamvlm.vision.encoder import VisionEncoder

ATOL = 1e-5
QUESTION = "What is happening?"
NEW_TOKENS = 8
TOKENS = 64  # per frame: 512 px / 16 px patches = 32x32, pixel-shuffled by 4 -> 8x8


def _pipeline(model, budget: int = 8192, pruning: dict | None = None) -> StreamingVLM:
    cfg = PipelineConfig().replace(
        model={"name": "tiny-smolvlm"},
        vision={"fps": 0.0, "delta.mode": "off", "prune": pruning or {"mode": "off"}},
        language={"caption_interval_s": 0.0, "cache.budget_tokens": budget},
    )
    return StreamingVLM(cfg, model)


def _video_text(model, seconds: list[int]) -> str:
    image = "<image>" * TOKENS
    return "".join(model.prompt.marker(s) + image + model.prompt.frame_suffix for s in seconds) + FRAMES_END


def _pixels(model, frames) -> torch.Tensor:
    return torch.cat([model.preprocess(f) for f in frames])[None]  # [1, F, 3, 512, 512]


def test_prompt_follows_smolvlm2s_video_layout(tiny_smolvlm):
    prompt = tiny_smolvlm.prompt
    assert prompt.marker(65) == "\nFrame from 01:05:<fake_token_around_image><global-img>"
    assert prompt.frame_suffix == "<fake_token_around_image>"
    rendered = tiny_smolvlm.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Q"}]}],
        tokenize=False, add_generation_prompt=True, chat_template=chat_template())
    assert rendered == "<|im_start|>User: <video>Q<end_of_utterance>\nAssistant:"
    assert prompt.stream_prefix + "<video>" + prompt.question_prefix + "Q" + prompt.question_suffix == rendered


def test_tower_and_connector_equal_transformers_image_features(tiny_smolvlm, frames):
    pixels = _pixels(tiny_smolvlm, frames[:2])
    with torch.inference_mode():
        ours, grid = tiny_smolvlm.project(VisionEncoder(tiny_smolvlm.tower)(pixels[0]))
        theirs = tiny_smolvlm.hf_model.model.get_image_features(pixels).pooler_output
    assert grid == (8, 8) and ours.shape == (2, TOKENS, 64)
    torch.testing.assert_close(ours.reshape(-1, 64), torch.cat(list(theirs)).reshape(-1, 64), atol=ATOL, rtol=0)


@pytest.mark.parametrize("pruning", [{"mode": "off"}, {"mode": "stc", "keep_tokens": TOKENS}],
                         ids=["unpruned", "stc-keep-all"])
@pytest.mark.parametrize("budget", [8192, 0], ids=["streaming", "full"])
def test_streaming_equals_offline_forward_and_generate(tiny_smolvlm, frames, budget, pruning):
    vlm = _pipeline(tiny_smolvlm, budget, pruning)
    for i, frame in enumerate(frames):
        vlm.push(frame, (i + 1) * 10**9)
    answer = vlm.ask(QUESTION, max_new_tokens=NEW_TOKENS)

    prompt = tiny_smolvlm.prompt
    text = prompt.stream_prefix + _video_text(tiny_smolvlm, [0, 1, 2]) + QUESTION + prompt.question_suffix
    ids = tiny_smolvlm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    pixels = _pixels(tiny_smolvlm, frames)
    with torch.inference_mode():
        reference = tiny_smolvlm.hf_model(input_ids=ids, pixel_values=pixels).logits[0, -1].float()
        generated = tiny_smolvlm.hf_model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=NEW_TOKENS,
                                                   do_sample=False)[0, ids.shape[1]:].tolist()
    torch.testing.assert_close(answer.first_logits, reference, atol=ATOL, rtol=0)
    top2 = torch.topk(reference, 2).values
    assert float(top2[0] - top2[1]) > 10 * ATOL  # the greedy comparison below decides something
    assert answer.token_ids == generated
    assert answer.success and answer.evidence_ns == [10**9, 2 * 10**9, 3 * 10**9]


def test_second_turn_continues_the_same_context(tiny_smolvlm, frames):
    vlm = _pipeline(tiny_smolvlm)
    for i, frame in enumerate(frames[:2]):
        vlm.push(frame, (i + 1) * 10**9)
    first = vlm.ask(QUESTION, max_new_tokens=NEW_TOKENS)
    vlm.push(frames[2], 5 * 10**9)
    second = vlm.ask("And now?", max_new_tokens=NEW_TOKENS)

    prompt = tiny_smolvlm.prompt
    tok = lambda text: tiny_smolvlm.tokenize(text)[0].tolist()  # noqa: E731
    answer = first.token_ids[:-1] if first.token_ids[-1] in prompt.stop_token_ids else first.token_ids
    ids = (tok(prompt.stream_prefix + _video_text(tiny_smolvlm, [0, 1]) + QUESTION + prompt.question_suffix)
           + answer + tok(prompt.turn_separator + _video_text(tiny_smolvlm, [4]) + "And now?"
                          + prompt.question_suffix))
    with torch.inference_mode():
        reference = tiny_smolvlm.hf_model(input_ids=torch.tensor([ids]), pixel_values=_pixels(tiny_smolvlm, frames))
    torch.testing.assert_close(second.first_logits, reference.logits[0, -1].float(), atol=ATOL, rtol=0)
