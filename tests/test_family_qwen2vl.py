"""Qwen2-VL and Qwen2.5-VL streamed equal transformers' own model over the same frames.

The reference is transformers' forward and `generate` over the prompt its processor builds
for the same frames given as images (each <|vision_start|>, its <|image_pad|> tokens,
<|vision_end|>), with the pixels from its own image processor, so that the patch order,
the 2x2 merge, Qwen2.5-VL's windows and `get_rope_index`'s M-RoPE positions are all
transformers' and not ours.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from streamvlm.config import ModelConfig, PipelineConfig
from streamvlm.models import load_model
from streamvlm.pipeline import StreamingVLM
from streamvlm.vision.encoder import VisionEncoder

ATOL = 1e-5
QUESTION = "What is happening?"
NEW_TOKENS = 8
TOKENS = 16  # per frame: 112 px / 14 px patches = 8x8, merged 2x2 -> 4x4


@pytest.fixture(scope="module", params=["tiny-qwen2vl", "tiny-qwen25vl"])
def qwen(request):
    return load_model(ModelConfig(name=request.param, fallback_to_tiny=False))


def _pipeline(model, budget: int = 8192, pruning: dict | None = None, **cache) -> StreamingVLM:
    cfg = PipelineConfig().replace(
        model={"name": model.name},
        vision={"fps": 0.0, "delta.mode": "off", "prune": pruning or {"mode": "off"}},
        language={"caption_interval_s": 0.0, "cache": {"budget_tokens": budget, **cache}},
    )
    return StreamingVLM(cfg, model)


def _images(model, frames) -> dict:
    """transformers' image processor over the frames at the stream's size (already resized,
    so both sides resize alike): pixel_values in its patch order and image_grid_thw."""
    resized = [model._pixels.resize(f).transpose(1, 2, 0) for f in frames]
    return dict(Qwen2VLImageProcessorPil()(images=resized, do_resize=False, return_tensors="pt"))


def _frames_text(count: int) -> str:
    return ("<|vision_start|>" + "<|image_pad|>" * TOKENS + "<|vision_end|>") * count


def _reference_inputs(model, ids: list[int], frames) -> dict:
    ids = torch.tensor([ids])
    pad = model.hf_model.config.image_token_id
    images = _images(model, frames)
    return dict(input_ids=ids, mm_token_type_ids=(ids == pad).int(), **images)


def test_tower_and_merger_equal_transformers_image_features(qwen, frames):
    with torch.inference_mode():
        ours, grid = qwen.project(VisionEncoder(qwen.tower)(torch.cat([qwen.preprocess(f) for f in frames])))
        images = _images(qwen, frames)
        theirs = qwen.hf_model.model.get_image_features(images["pixel_values"], images["image_grid_thw"])
    assert grid == (4, 4) and ours.shape == (3, TOKENS, 64)
    torch.testing.assert_close(ours.reshape(-1, 64), torch.cat(list(theirs.pooler_output)), atol=ATOL, rtol=0)


@pytest.mark.parametrize("pruning", [{"mode": "off"}, {"mode": "stc", "keep_tokens": TOKENS}],
                         ids=["unpruned", "stc-keep-all"])
@pytest.mark.parametrize("budget", [8192, 0], ids=["streaming", "full"])
def test_streaming_equals_offline_forward_and_generate(qwen, frames, budget, pruning):
    vlm = _pipeline(qwen, budget, pruning)
    for i, frame in enumerate(frames):
        vlm.push(frame, (i + 1) * 10**9)
    answer = vlm.ask(QUESTION, max_new_tokens=NEW_TOKENS)

    prompt = qwen.prompt
    text = prompt.stream_prefix + _frames_text(len(frames)) + QUESTION + prompt.question_suffix
    inputs = _reference_inputs(qwen, qwen.tokenize(text)[0].tolist(), frames)
    with torch.inference_mode():
        reference = qwen.hf_model(**inputs).logits[0, -1].float()
        generated = qwen.hf_model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    generated = generated[0, inputs["input_ids"].shape[1]:].tolist()
    torch.testing.assert_close(answer.first_logits, reference, atol=ATOL, rtol=0)
    top2 = torch.topk(reference, 2).values
    assert float(top2[0] - top2[1]) > 10 * ATOL  # the greedy comparison below decides something
    assert answer.token_ids == generated
    assert answer.success and answer.evidence_ns == [10**9, 2 * 10**9, 3 * 10**9]


def test_second_turn_continues_the_same_context(qwen, frames):
    vlm = _pipeline(qwen)
    for i, frame in enumerate(frames[:2]):
        vlm.push(frame, (i + 1) * 10**9)
    first = vlm.ask(QUESTION, max_new_tokens=NEW_TOKENS)
    vlm.push(frames[2], 5 * 10**9)
    second = vlm.ask("And now?", max_new_tokens=NEW_TOKENS)

    prompt = qwen.prompt
    tok = lambda text: qwen.tokenize(text)[0].tolist()  # noqa: E731
    answer = first.token_ids[:-1] if first.token_ids[-1] in prompt.stop_token_ids else first.token_ids
    ids = (tok(prompt.stream_prefix + _frames_text(2) + QUESTION + prompt.question_suffix) + answer
           + tok(prompt.turn_separator + _frames_text(1) + "And now?" + prompt.question_suffix))
    with torch.inference_mode():
        reference = qwen.hf_model(**_reference_inputs(qwen, ids, frames)).logits[0, -1].float()
    torch.testing.assert_close(second.first_logits, reference, atol=ATOL, rtol=0)


def test_lossless_memory_answers_as_transformers_over_every_frame(qwen, frames):
    """Frames that left the window come back from memory (compression off, every frame
    retrieved) with their M-RoPE layout, at contiguous positions: the answer equals
    transformers' forward over all frames."""
    memory = {"keep_ratio": 1.0, "dtype": "float32", "top_k": 16, "match": "tokens"}
    cfg = PipelineConfig().replace(
        model={"name": qwen.name}, vision={"fps": 0.0, "delta.mode": "off", "prune.mode": "off"},
        language={"caption_interval_s": 0.0, "cache.vision_window_s": 0.0, "memory": memory})
    vlm = StreamingVLM(cfg, qwen)
    stream = frames + [f[::-1].copy() for f in frames]  # 6 frames
    for i, frame in enumerate(stream):
        vlm.push(frame, (i + 1) * 10**9)
    stage = vlm.language
    stage.reconfigure(stage.cfg.replace(language={"cache.vision_window_frames": 2}))  # 4 frames leave
    answer = vlm.ask(QUESTION, max_new_tokens=4)

    assert answer.success, answer.error
    assert answer.evidence_ns == [(i + 1) * 10**9 for i in range(6)]  # 4 retrieved + 2 in the context
    assert stage.memory.stamps == [(i + 1) * 10**9 for i in range(4)]
    prompt = qwen.prompt
    ids = qwen.tokenize(prompt.stream_prefix + _frames_text(6) + QUESTION + prompt.question_suffix)[0].tolist()
    with torch.inference_mode():
        reference = qwen.hf_model(**_reference_inputs(qwen, ids, stream)).logits[0, -1].float()
    torch.testing.assert_close(answer.first_logits, reference, atol=ATOL, rtol=0)


def test_the_delta_caches_change_is_in_camera_pixels_whatever_the_normalization(qwen, frames):
    """Qwen normalizes with CLIP's std (about 0.27), not SigLIP's 0.5: the delta cache turns
    a change of its input back into 0..1 camera pixels, so its threshold means the same."""
    import torch.nn.functional as F

    from streamvlm.vision.delta_cache import DeltaViT

    delta = DeltaViT(qwen.tower)
    a, b = frames[0], frames[1]
    ours = delta.patches(qwen.preprocess(a)) - delta.patches(qwen.preprocess(b))
    camera = torch.from_numpy(qwen._pixels.resize(a).astype("float32") - qwen._pixels.resize(b)) / 255
    theirs = F.unfold(camera[None], kernel_size=14, stride=14)[0].T
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
