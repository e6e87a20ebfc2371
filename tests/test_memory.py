"""Long-term memory: storage, compression and retrieval mechanics, and exactness end to end.

The retrieval tests use constructed keys, so they hold whatever the weights. The exactness
test uses the tiny LLaVA-OneVision against transformers' own forward.
"""

from __future__ import annotations

import math

import pytest
import torch

from streamvlm.config import PipelineConfig
from streamvlm.llm.memory import FrameMemory, MemorySettings
from streamvlm.llm.stage import LanguageStage
from streamvlm.pipeline import StreamingVLM

S = 10**9
LAYERS, KV_HEADS, GROUP, DIM = 3, 2, 2, 8


def _frame(seed: int, tokens: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (LAYERS, KV_HEADS, tokens, DIM)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def _query_for(keys: torch.Tensor) -> torch.Tensor:
    """A one-token question whose query per layer is the frame's mean key, for every query head."""
    return keys.mean(dim=2).repeat_interleave(GROUP, dim=1)[:, None]  # [layers, 1, q_heads, d]


def _memory(**settings) -> FrameMemory:
    return FrameMemory(MemorySettings(**{"keep_ratio": 1.0, "dtype": "float32", "top_k": 3, **settings}))


def test_the_frame_whose_key_matches_the_question_is_retrieved_first():
    memory = _memory(match="mean")  # ReKV's cosine of means: the target scores 1
    frames = [_frame(i) for i in range(12)]
    for i, (k, v) in enumerate(frames):
        memory.add(k, v, torch.ones(10), (i + 1) * S)
    for target in (0, 5, 11):
        scores = memory.scores(_query_for(frames[target][0]))
        assert int(scores.argmax()) == target and float(scores[target]) == pytest.approx(1.0, abs=1e-3)
        chosen = memory.retrieve(_query_for(frames[target][0]), 1000, torch.device("cpu"), torch.float32)
        stamps = [frame.stamp_ns for frame in chosen]
        assert len(stamps) == 3 and (target + 1) * S in stamps and stamps == sorted(stamps)  # time order
        keys, values, *_ = chosen[stamps.index((target + 1) * S)]
        assert torch.equal(keys, frames[target][0]) and torch.equal(values, frames[target][1])
    # A token limit takes the best frames that fit.
    assert len(memory.retrieve(_query_for(frames[3][0]), 25, torch.device("cpu"), torch.float32)) == 2


_SHARED = torch.nn.functional.normalize(torch.randn(DIM, generator=torch.Generator().manual_seed(5)), dim=0)


def _needle_question(direction: torch.Tensor, steps: int = 8, seed: int = 99) -> torch.Tensor:
    """[layers, steps, q_heads, d]: small random queries sharing one direction (words that
    attend broadly, and alike), and one that points along `direction` [layers, kv_heads, d]
    (the content word)."""
    g = torch.Generator().manual_seed(seed)
    queries = 0.5 * torch.randn(LAYERS, steps, KV_HEADS * GROUP, DIM, generator=g) + _SHARED
    queries[:, steps // 2] = 2 * direction.repeat_interleave(GROUP, dim=1)
    return queries


@pytest.mark.parametrize("dtype", ["float32", "int8", "int4"])
def test_token_matching_finds_the_frame_holding_one_matching_token(dtype):
    """A small object is one token of a frame, and a question's content one token of several:
    the frame with that token is found first, though means dilute it."""
    memory = _memory(match="tokens", dtype=dtype, keep_ratio=1.0)
    frames = [_frame(i) for i in range(40)]
    g = torch.Generator().manual_seed(7)
    needles = {}
    for target in (3, 17, 31):
        direction = torch.nn.functional.normalize(torch.randn(LAYERS, KV_HEADS, DIM, generator=g), dim=-1)
        frames[target][0][:, :, 6] = 6 * direction
        needles[target] = direction
    # Each frame's first two tokens are its time marker (importance +inf), with keys every
    # query would attend to: retrieval leaves them out.
    header = torch.tensor([float("inf")] * 2 + [1.0] * 8)
    for i, (k, v) in enumerate(frames):
        k[:, :, :2] = 4 * _SHARED * (1 + i / 40)  # later markers a little louder
        memory.add(k, v, header, (i + 1) * S)
    assert [f.header for f in memory.frames] == [2] * 40
    question = _needle_question(needles[17])
    for target, direction in needles.items():
        scores = memory.scores(_needle_question(direction))
        assert int(scores.argmax()) == target
        stamps = [frame.stamp_ns for frame in memory.retrieve(_needle_question(direction), 1000, torch.device("cpu"),
                                                           torch.float32)]
        assert (target + 1) * S in stamps
    # Brute force: every query (layer, query head, question token) attends over all stored
    # keys, its key head shared by its group of query heads; a frame gets the attention its keys receive.
    keys = torch.cat([k[:, :, 2:] for k, _ in frames], dim=2).repeat_interleave(GROUP, dim=1)  # [layers, q_heads, 320, d]
    attention = (torch.einsum("ltqd,lqnd->ltqn", question, keys) / DIM**0.5).softmax(dim=-1)
    expected = attention.reshape(*attention.shape[:3], len(frames), 8).sum(dim=(0, 1, 2, 4))
    loose = {"int8": 0.05, "int4": 0.25}.get(dtype)  # 4-bit keys move a softmax over 320 keys more
    torch.testing.assert_close(memory.scores(question), expected, rtol=loose or 1e-5, atol=loose or 1e-4)


def test_compression_keeps_the_most_attended_tokens_and_the_key_of_the_whole_frame():
    memory = _memory(keep_ratio=0.3, match="mean")
    keys, values = _frame(0)
    importance = torch.tensor([0.1, 5.0, 0.2, 4.0, 0.3, 0.0, 3.0, 0.1, 0.1, 0.1])
    memory.add(keys, values, importance, S)
    assert memory.frames[0].tokens == 3
    stored_keys, stored_values = memory.stored(0)
    assert torch.equal(stored_keys.data, keys[:, :, [1, 3, 6]])
    assert torch.equal(stored_values.data, values[:, :, [1, 3, 6]])
    assert torch.allclose(memory.retrieval_keys[0].float(), keys.mean(dim=2), atol=2e-3)


def test_int8_storage_is_close_and_four_times_smaller():
    exact, small = _memory(), _memory(dtype="int8")
    keys, values = _frame(1, tokens=64)
    exact.add(keys, values, torch.ones(64), S)
    small.add(keys, values, torch.ones(64), S)
    k, v, *_ = small.retrieve(_query_for(keys), 1000, torch.device("cpu"), torch.float32)[0]
    assert (k - keys).abs().max() <= keys.abs().amax(dim=-1, keepdim=True).max() / 127
    assert torch.allclose(v, values, atol=0.05)
    payload = lambda m: m.stored(0)[0].data.nbytes + m.stored(0)[1].data.nbytes  # noqa: E731
    assert payload(exact) == 4 * payload(small)


def test_int4_storage_is_within_half_a_step_of_each_group_and_packs_two_codes_a_byte():
    exact, small = _memory(), _memory(dtype="int4")
    keys, values = _frame(2, tokens=64)
    keys[0, 0, 5] = 0.0  # a flat group: zero range must not divide by zero
    for memory in (exact, small):
        memory.add(keys, values, torch.ones(64), S)
    k, v, *_ = small.retrieve(_query_for(keys), 1000, torch.device("cpu"), torch.float32)[0]
    # one group per token and head here (head_dim 8): a step is its range / 15
    for stored, original in ((k, keys), (v, values)):
        step = (original.amax(dim=-1, keepdim=True) - original.amin(dim=-1, keepdim=True)) / 15
        assert ((stored - original).abs() <= step / 2 + 2e-3 * original.abs().amax()).all()
    assert torch.equal(k[0, 0, 5], keys[0, 0, 5])
    stored = small.stored(0)[0]
    assert stored.data.dtype == torch.uint8 and stored.data.shape == (LAYERS, KV_HEADS, 64, DIM // 2)
    # codes: a byte per two channels; scale and minimum: 2 + 2 bytes per group of 8
    assert stored.nbytes == LAYERS * KV_HEADS * 64 * (DIM // 2 + 4)
    assert exact.stored(0)[0].nbytes == 4 * LAYERS * KV_HEADS * 64 * DIM
    assert small.frames[0].nbytes == 2 * stored.nbytes  # keys and values, nothing else under match: tokens


def test_int4_groups_span_32_channels_of_a_wider_head():
    from streamvlm.llm.quantize import store

    x = torch.randn(2, 1, 5, 64, generator=torch.Generator().manual_seed(4))
    packed = store(x, "int4")
    assert packed.scale.shape == (2, 1, 5, 2, 1) and packed.data.shape == (2, 1, 5, 32)
    back = packed.dequantize("cpu")
    groups = x.unflatten(-1, (2, 32))
    step = (groups.amax(dim=-1, keepdim=True) - groups.amin(dim=-1, keepdim=True)) / 15
    assert ((back.unflatten(-1, (2, 32)) - groups).abs() <= step / 2 + 1e-3).all()
    # one layer and a run of tokens read alone = the same cut of the whole
    torch.testing.assert_close(packed.map(lambda t: t[1, :, 1:4]).dequantize("cpu"), back[1, :, 1:4], rtol=0, atol=0)
    with pytest.raises(ValueError, match="even head_dim"):
        store(torch.randn(1, 1, 2, 7), "int4")


def test_retrieval_keys_are_kept_only_for_mean_matching_and_rebuilt_on_a_switch():
    by_tokens = _memory(match="tokens")
    frames = [_frame(i) for i in range(4)]
    for i, (k, v) in enumerate(frames):
        by_tokens.add(k, v, torch.ones(10), (i + 1) * S)
    assert by_tokens.retrieval_keys is None or len(by_tokens.retrieval_keys) == 0
    assert by_tokens.nbytes == sum(f.nbytes for f in by_tokens.frames)
    plain = by_tokens.nbytes
    by_tokens.settings = MemorySettings(keep_ratio=1.0, dtype="float32", top_k=3, match="mean")
    expected = torch.stack([k.mean(dim=2) for k, _ in frames])
    assert torch.allclose(by_tokens.retrieval_keys.float(), expected, atol=2e-3)
    assert by_tokens.nbytes == sum(f.nbytes for f in by_tokens.frames) == plain + 4 * expected[0].numel() * 2
    assert int(by_tokens.scores(_query_for(frames[2][0])).argmax()) == 2
    by_tokens.settings = MemorySettings(keep_ratio=1.0, dtype="float32", top_k=3, match="tokens")
    assert by_tokens.nbytes == plain


def test_budget_drops_the_oldest_frames():
    memory = _memory(max_frames=3, match="mean")
    for i in range(5):
        memory.add(*_frame(i), torch.ones(10), (i + 1) * S)
    assert memory.stamps == [3 * S, 4 * S, 5 * S] and memory.dropped == 2
    expected = torch.stack([_frame(i)[0].mean(dim=2) for i in (2, 3, 4)])
    assert torch.allclose(memory.retrieval_keys.float(), expected, atol=2e-3)  # the keys follow the frames
    by_bytes = _memory(max_mb=(3 * memory.frames[0].nbytes + 10) / 2**20, match="mean")
    for i in range(5):
        by_bytes.add(*_frame(i), torch.ones(10), (i + 1) * S)
    assert len(by_bytes) == 3 and by_bytes.nbytes <= 3 * memory.frames[0].nbytes + 10
    with pytest.raises(ValueError, match="keep_ratio"):
        MemorySettings(keep_ratio=0.0)


def _vlm(model, **language) -> StreamingVLM:
    cfg = PipelineConfig().replace(
        model={"name": "tiny"}, vision={"fps": 0.0, "delta.mode": "off", "prune.mode": "off"},
        language={"caption_interval_s": 0.0, "cache.vision_window_s": 0.0, **language})
    return StreamingVLM(cfg, model)


@pytest.mark.parametrize("match", ["mean", "tokens"])
def test_lossless_memory_answers_as_full_attention_over_every_frame(tiny_model, frames, match):
    """Compression off, k = every stored frame: the frames that left the window come back
    between the sinks and the window at contiguous positions, and the answer equals
    transformers' forward over all frames and the question."""
    from test_exactness import ATOL, QUESTION, _hf_prompt_ids, _pixels

    vlm = _vlm(tiny_model, memory={"keep_ratio": 1.0, "dtype": "float32", "top_k": 16, "match": match})
    stream = frames + [f[::-1].copy() for f in frames]  # 6 frames
    for i, frame in enumerate(stream):
        vlm.push(frame, (i + 1) * S)
    stage: LanguageStage = vlm.language
    # Shrink the window: at the question, frames 2-4 leave into memory (the tiny model's
    # 2-token stream prefix leaves the first frame holding attention sinks: it stays).
    stage.reconfigure(stage.cfg.replace(language={"cache.vision_window_frames": 2}))
    answer = vlm.ask(QUESTION, max_new_tokens=4)

    assert answer.success, answer.error
    assert answer.evidence_ns == [(i + 1) * S for i in range(6)]  # 3 retrieved + 3 in the context
    ids = _hf_prompt_ids(tiny_model, len(stream), QUESTION)
    with torch.inference_mode():
        reference = tiny_model.hf_model(input_ids=ids, pixel_values_videos=_pixels(tiny_model, stream))
    torch.testing.assert_close(answer.first_logits, reference.logits[0, -1].float(), atol=ATOL, rtol=0)
    # Afterwards the streaming context is as before (plus the turn); memory keeps the 3.
    assert stage.frame_stamps == [S, 5 * S, 6 * S] and stage.memory.stamps == [2 * S, 3 * S, 4 * S]
    stage.engine.cache.policy.check()


def test_retrieval_leaves_the_streaming_cache_as_it_was(tiny_model):
    vlm = _vlm(tiny_model, cache={"vision_window_frames": 2}, memory={"top_k": 2})
    stage: LanguageStage = vlm.language
    g = torch.Generator().manual_seed(0)
    hidden = tiny_model.decoder.config.hidden_size
    from streamvlm.types import TokenBatch

    for i in range(6):
        stage.ingest(TokenBatch((i + 1) * S, i, torch.randn(50, hidden, generator=g) * 0.02, torch.arange(50),
                                (14, 14), model="tiny"))
    stage._start()
    engine = stage.engine
    engine.reserve(40, recall=True)
    used = engine.length
    keys = engine.keys_before_rope(slice(0, used)).clone()
    stamps = engine.recall(tiny_model.embed_tokens(tiny_model.tokenize("what was red?"))[0])
    assert len(stamps) == 2 and engine.length == used + sum(f.tokens for f in stage.memory.frames
                                                            if f.stamp_ns in stamps)
    assert stage.frame_stamps == sorted(stamps + [S, 5 * S, 6 * S])
    engine.release()
    assert engine.length == used and stage.frame_stamps == [S, 5 * S, 6 * S]
    # Moved up and back: rotated there and back again, equal but for float rounding.
    torch.testing.assert_close(engine.keys_before_rope(slice(0, used)), keys, atol=1e-5, rtol=0)


def test_retrieval_keys_stay_in_step_over_many_frames():
    memory = _memory(max_frames=50, match="mean")
    frames = [_frame(i, tokens=2) for i in range(300)]
    for i, (k, v) in enumerate(frames):
        memory.add(k, v, torch.ones(2), i * S)
    assert memory.stamps == [i * S for i in range(250, 300)]
    expected = torch.stack([k.mean(dim=2) for k, _ in frames[250:]])
    assert torch.allclose(memory.retrieval_keys.float(), expected, atol=2e-3)
    assert int(memory.scores(_query_for(frames[260][0])).argmax()) == 10


def test_retrieved_frames_leave_even_when_the_answer_fails(tiny_model, monkeypatch):
    import streamvlm.llm.stage as stage_module
    from streamvlm.types import TokenBatch

    vlm = _vlm(tiny_model, cache={"vision_window_frames": 2}, memory={"top_k": 4})
    stage: LanguageStage = vlm.language
    hidden = tiny_model.decoder.config.hidden_size
    for i in range(6):
        stage.ingest(TokenBatch((i + 1) * S, i, torch.randn(30, hidden) * 0.02, torch.arange(30), (14, 14),
                                model="tiny"))
    assert len(stage.memory) == 3

    def broken(*args, **kwargs):
        raise RuntimeError("decoding failed")

    monkeypatch.setattr(stage_module, "generate", broken)
    with pytest.raises(RuntimeError, match="decoding failed"):
        stage.ask("what was there?")
    assert stage.frame_stamps == [S, 5 * S, 6 * S]  # no retrieved frame stayed behind
    stage.engine.cache.policy.check()


def test_a_frames_text_is_always_kept_and_the_ratio_applies_to_the_rest():
    memory = _memory(keep_ratio=0.25)
    keys, values = _frame(1, tokens=12)
    importance = torch.tensor([float("inf")] * 3 + [0.0, 9.0, 0.0, 0.0, 0.0, 8.0, 0.0, 0.0] + [float("inf")])
    memory.add(keys, values, importance, S)
    # the marker, a quarter of the 8 visual tokens, and the closing delimiter
    assert memory.frames[0].tokens == 3 + 2 + 1
    assert (memory.frames[0].header, memory.frames[0].footer) == (3, 1)
    assert torch.equal(memory.stored(0)[0].data, keys[:, :, [0, 1, 2, 4, 8, 11]])


def test_a_frames_closing_text_takes_no_part_in_matching():
    """A delimiter after every frame (SmolVLM's, Qwen2-VL's) with a key every query attends to
    must not decide which frame a question brings back."""
    memory = _memory(match="tokens", keep_ratio=1.0)
    importance = torch.tensor([float("inf")] * 2 + [1.0] * 7 + [float("inf")])
    plain = _memory(match="tokens", keep_ratio=1.0)
    for i in range(6):
        k, v = _frame(i)
        loud = k.clone()
        loud[:, :, 9] = 4 * _SHARED * (1 + i)  # later frames' delimiters louder
        memory.add(loud, v, importance, (i + 1) * S)
        plain.add(k, v, importance, (i + 1) * S)
    direction = torch.nn.functional.normalize(torch.randn(LAYERS, KV_HEADS, DIM, generator=torch.Generator()
                                                          .manual_seed(3)), dim=-1)
    question = _needle_question(direction)
    torch.testing.assert_close(memory.scores(question), plain.scores(question))


@pytest.mark.parametrize("keep_ratio", [1.0, 0.5])
def test_memory_knows_each_frames_time_marker_whether_or_not_frames_are_scored(tiny_model, keep_ratio):
    vlm = _vlm(tiny_model, cache={"vision_window_frames": 1}, memory={"keep_ratio": keep_ratio, "top_k": 2})
    engine = vlm.language.engine
    engine.cache.buffers.scores.fill_(float("inf"))  # stale values must not pose as a marker
    hidden = tiny_model.decoder.config.hidden_size
    for i in range(4):
        engine.prefill_frame(torch.randn(12, hidden) * 0.02, (i + 1) * S, header=3, footer=1)
    stored = engine.memory.frames
    assert len(stored) >= 2 and all((f.header, f.footer) == (3, 1) for f in stored)
    assert all(f.tokens == 3 + math.ceil(keep_ratio * 8) + 1 for f in stored)


def test_frames_wrap_around_the_store_without_overwriting_each_other():
    """Frames of uneven size in a store a few frames big: each run stays contiguous, wraps to
    the start when the end is too short, and every held frame reads back as it was kept."""
    row_bytes = 2 * LAYERS * KV_HEADS * DIM * 4  # float32 keys and values of one token
    memory = _memory(max_mb=50 * row_bytes / 2**20)
    kept = {}
    for i in range(120):
        tokens = 3 + (7 * i) % 11
        keys, values = _frame(i, tokens)
        memory.add(keys, values, torch.ones(tokens), (i + 1) * S)
        kept[(i + 1) * S] = (keys, values)
        assert memory.nbytes <= 50 * row_bytes and memory.reserved_bytes <= 50 * row_bytes
        for index, stamp in enumerate(memory.stamps):
            read_keys, read_values = memory.read(index, "cpu")
            assert torch.equal(read_keys, kept[stamp][0]) and torch.equal(read_values, kept[stamp][1])
    assert memory.dropped > 100 and len(memory) >= 4


def test_a_new_store_dtype_applies_to_the_frames_already_held():
    memory = _memory()
    frames = [_frame(i, tokens=6) for i in range(5)]
    for i, (k, v) in enumerate(frames):
        memory.add(k, v, torch.ones(6), (i + 1) * S)
    exact = memory.nbytes
    memory.settings = MemorySettings(keep_ratio=1.0, dtype="int4", top_k=3)
    # head_dim 8: one group a token and head, 4 bytes of codes and 4 of scale and minimum
    assert memory.stored(0)[0].data.dtype == torch.uint8 and memory.nbytes == exact // 4
    keys, values = memory.read(3, "cpu")
    assert (keys - frames[3][0]).abs().max() < 0.5 and (values - frames[3][1]).abs().max() < 0.5
    assert memory.stamps == [(i + 1) * S for i in range(5)]


def test_a_new_dtype_keeps_each_frames_retrieval_key():
    memory = _memory(match="mean")
    frames = [_frame(i, tokens=6) for i in range(4)]
    for i, (k, v) in enumerate(frames):
        memory.add(k, v, torch.ones(6), (i + 1) * S)
    before = memory.retrieval_keys.clone()
    memory.settings = MemorySettings(keep_ratio=1.0, dtype="int8", top_k=3, match="mean")
    assert torch.equal(memory.retrieval_keys, before) and memory.nbytes == sum(f.nbytes for f in memory.frames)
