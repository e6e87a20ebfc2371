"""LanguageStage over the streaming cache: hours of frames at a fixed budget, answers with
the frames they saw as evidence, and refusals that say why."""

from __future__ import annotations

import torch
from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

from streamvlm.config import PipelineConfig
from streamvlm.llm.decoding import Sampling, transform_logits
from streamvlm.llm.stage import LanguageStage
from streamvlm.types import TokenBatch

S = 10**9


def _stage(model, **language) -> LanguageStage:
    cfg = PipelineConfig().replace(model={"name": "tiny"}, language={"caption_interval_s": 0.0, **language})
    return LanguageStage(cfg, model)


def _batch(model, stamp_ns: int, tokens: int = 196) -> TokenBatch:
    g = torch.Generator().manual_seed(stamp_ns // S)
    hidden = model.decoder.config.hidden_size
    return TokenBatch(stamp_ns, 0, torch.randn(tokens, hidden, generator=g) * 0.02, torch.arange(tokens),
                      (14, 14), model="tiny")


def test_a_long_stream_stays_within_the_budget_and_answers_from_the_window(tiny_model):
    stage = _stage(tiny_model, cache={"budget_tokens": 2048, "vision_window_s": 4.0, "text_sink_tokens": 64,
                                      "text_window_tokens": 64}, max_new_tokens=8, memory={"top_k": 0})  # the window alone
    pointer = stage.engine.cache.buffers.keys.data_ptr()
    # The tiny model's stream prefix is 2 tokens, so the first frame holds sinks 2 and 3
    # and stays (a frame leaves whole); a real chat template's system prompt covers the sinks.
    assert len(tiny_model.tokenize(tiny_model.prompt.stream_prefix)[0]) < 4
    for second in range(1, 201):
        stage.ingest(_batch(tiny_model, second * S))
        assert stage.context_tokens <= 2048
        if second % 50 == 0:
            answer = stage.ask("What happened?")
            assert answer.success, answer.error
            assert answer.evidence_ns == [S] + [s * S for s in range(second - 3, second + 1)]  # sink + 4 s window
    assert stage.frame_stamps == [S, 197 * S, 198 * S, 199 * S, 200 * S]
    assert stage.evicted_tokens > 190 * 196
    assert stage.engine.cache.buffers.keys.data_ptr() == pointer


def test_a_question_too_long_for_the_budget_is_refused_with_the_reason(tiny_model):
    stage = _stage(tiny_model, cache={"budget_tokens": 600, "text_sink_tokens": 32}, max_question_chars=100_000)
    stage.ingest(_batch(tiny_model, S))
    before = stage.context_tokens
    answer = stage.ask("why " * 400, max_new_tokens=16)
    assert not answer.success and "budget_tokens" in answer.error and "need" in answer.error
    assert stage.context_tokens == before  # nothing was evicted for a refused question
    assert stage.ask("why?", max_new_tokens=4).success


def test_window_settings_change_while_running_but_the_budget_does_not(tiny_model):
    stage = _stage(tiny_model, cache={"budget_tokens": 4096, "sink_tokens": 0, "vision_window_s": 0.0,
                                      "vision_window_frames": 10})
    for second in range(1, 9):
        stage.ingest(_batch(tiny_model, second * S))
    stage.reconfigure(stage.cfg.replace(language={"cache.vision_window_frames": 3}))
    stage.ingest(_batch(tiny_model, 9 * S))
    assert stage.frame_stamps == [7 * S, 8 * S, 9 * S]
    for bad in ({"cache.budget_tokens": 8192}, {"cache.text_sink_tokens": 4096}):
        try:
            stage.reconfigure(stage.cfg.replace(language=bad))
        except ValueError as err:
            assert "budget_tokens" in str(err)
        else:
            raise AssertionError(f"{bad} was accepted")


def test_sampling_transforms_equal_transformers_processors():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 500, generator=g) * 4
    seen = torch.randint(0, 500, (1, 40), generator=g)
    for temperature, top_p, penalty in [(0.7, 0.9, 1.3), (1.5, 0.5, 0.8), (1.0, 1.0, 1.0), (0.3, 0.05, 2.0)]:
        expected = logits.clone()
        for processor in (RepetitionPenaltyLogitsProcessor(penalty), TemperatureLogitsWarper(temperature),
                          TopPLogitsWarper(top_p)):
            expected = processor(seen, expected)
        ours = transform_logits(logits[0], seen[0], Sampling(temperature, top_p, penalty))
        torch.testing.assert_close(ours, expected[0])


def _with_marker(model, monkeypatch):
    import dataclasses

    monkeypatch.setattr(model, "prompt", dataclasses.replace(model.prompt, frame_marker=" {s}s"))


def test_time_markers_go_before_each_frame_and_streaming_equals_full_attention(tiny_model, monkeypatch):
    _with_marker(tiny_model, monkeypatch)
    marker_tokens = [len(tiny_model.tokenize(f" {s}s")[0]) for s in (0, 1, 5)]
    stages = [_stage(tiny_model, cache={"budget_tokens": 4096}, max_new_tokens=4, memory={"top_k": 0}),
              _stage(tiny_model, cache={"budget_tokens": 0}, max_new_tokens=4)]
    for stage in stages:
        start = stage.context_tokens
        for second in (10, 11, 15):  # markers count from the first frame: 0s, 1s, 5s
            stage.ingest(_batch(tiny_model, second * S, tokens=20))
        prefix = len(tiny_model.tokenize(tiny_model.prompt.stream_prefix)[0])
        assert stage.context_tokens - start == prefix + sum(marker_tokens) + 3 * 20
    streaming, full = (s.ask("What happened at 1s?") for s in stages)
    torch.testing.assert_close(streaming.first_logits, full.first_logits, atol=1e-5, rtol=0)
    assert streaming.token_ids == full.token_ids


def test_memory_keeps_a_leaving_frames_marker_whole(tiny_model, monkeypatch):
    _with_marker(tiny_model, monkeypatch)
    stage = _stage(tiny_model, cache={"budget_tokens": 4096, "vision_window_frames": 2},
                   memory={"keep_ratio": 0.25, "dtype": "float32"})
    for second in range(1, 13):
        stage.ingest(_batch(tiny_model, second * S, tokens=40))
    marker = len(tiny_model.tokenize(" 5s")[0])
    stored = [f for f in stage.memory.frames if f.stamp_ns == 6 * S][0]
    assert stored.tokens == marker + 10  # the marker, and a quarter of the 40 frame tokens


def test_a_question_whose_room_evicts_frames_sends_them_to_memory(tiny_model):
    # Frames fill the budget inside the time window, so the question's reservation evicts
    # one; that eviction runs outside the prefill, where memory's tensors were made.
    stage = _stage(tiny_model, cache={"budget_tokens": 1024, "text_sink_tokens": 64, "text_window_tokens": 64},
                   max_new_tokens=8)
    for second in range(1, 12):
        stage.ingest(_batch(tiny_model, second * S, tokens=100))
    held = len(stage.memory)
    assert held > 0 and stage.engine.free < 64
    answer = stage.ask("What happened?")
    assert answer.success, answer.error
    assert len(stage.memory) > held
