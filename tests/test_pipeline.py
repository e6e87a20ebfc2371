"""StreamingVLM's behaviour around the model: captions, bad questions, frames out of order."""

from __future__ import annotations

import pytest

from streamvlm.config import PipelineConfig
from streamvlm.pipeline import StreamingVLM

S = 1_000_000_000


def _pipeline(model, **language) -> StreamingVLM:
    cfg = PipelineConfig().replace(model={"name": "tiny"}, vision={"fps": 1.0},
                                   language={"caption_max_new_tokens": 3, **language})
    return StreamingVLM(cfg, model)


def test_captions_every_interval_cover_their_span(tiny_model, frames):
    vlm = _pipeline(tiny_model, caption_interval_s=2.0)
    captions = []
    for i in range(21):  # 5 s of a 4 fps camera, sampled at 1 fps
        caption = vlm.push(frames[i % 3], i * S // 4)
        if caption is not None:
            captions.append(caption)
    assert [(c.start_ns, c.stamp_ns) for c in captions] == [(0, 2 * S), (3 * S, 4 * S)]
    assert all(c.text and c.latency_ms > 0 for c in captions)


def test_bad_questions_get_an_answer_with_a_reason(tiny_model):
    vlm = _pipeline(tiny_model, caption_interval_s=0.0)
    for question, reason in [("", "empty"), ("   ", "empty"), ("x" * 5000, "limit")]:
        answer = vlm.ask(question)
        assert not answer.success and reason in answer.error


def test_late_frames_are_counted_drops(tiny_model, frames):
    vlm = _pipeline(tiny_model, caption_interval_s=0.0)
    vlm.push(frames[0], 5 * S)
    vlm.push(frames[1], 5 * S - S // 2)  # swapped in transit: within stream.max_reorder_s
    vlm.push(frames[2], 5 * S)  # a repeated stamp
    assert vlm.dropped_late == 2 and vlm.language.frame_stamps == [5 * S]


def test_a_pipeline_takes_new_settings_whole_or_not_at_all(tiny_model, frames):
    vlm = StreamingVLM(PipelineConfig().replace(model={"name": "tiny"}, vision={"fps": 0.0}), tiny_model)
    vlm.push(frames[0], 10**9)
    vlm.reconfigure(vlm.cfg.replace(vision={"prune.mode": "stc"}, language={"memory.top_k": 0}))
    assert vlm.vision.pruner.settings.mode == "stc" and vlm.language.memory is None
    with pytest.raises(ValueError, match="budget_tokens"):
        vlm.reconfigure(vlm.cfg.replace(vision={"delta.mode": "off"}, language={"cache.budget_tokens": 100}))
    assert vlm.vision.encoder.settings.mode == "threshold"  # refused by one stage: neither changed
    vlm.push(frames[1], 2 * 10**9)
    assert vlm.language.frame_stamps == [10**9, 2 * 10**9]  # and the stream goes on
