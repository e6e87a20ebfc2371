"""The streaming engine against transformers: the tiny LLaVA-OneVision decoder (Qwen2,
random) and SmolLM2-135M (Llama, real trained weights).

(a) with nothing evicted it equals transformers' forward and its own DynamicCache;
(b) after evictions it equals full attention over exactly the kept tokens at contiguous
    positions (tests/kv_reference.py);
(c) sinks survive any number of evictions;
(d) random streams keep the budget, and every slot holds the key of the token that the
    policy says is there, in buffers that are never reallocated.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kv_reference import KeptTokensReference
from transformers import DynamicCache

from streamvlm.llm.decoding import Sampling, generate
from streamvlm.llm.engine import StreamingEngine
from streamvlm.config import ModelConfig
from streamvlm.llm.kv_cache import FRAME, TEXT, CacheLayout, frame_layout
from streamvlm.models import load_model

S = 10**9


class Decoder:
    """The decoder, head and a source of real-looking inputs of one test model."""

    def __init__(self, name, decoder, lm_head, ids, atol, language=None):
        self.name, self.decoder, self.lm_head, self.ids, self.atol = name, decoder, lm_head, ids, atol
        self.hidden = decoder.config.hidden_size
        self.language = language or decoder  # what the engine runs (an M-RoPE decoder needs its adapter's)
        self.mrope = language is not None and language.position_axes == 3

    def layout(self, kind: str, size: int) -> torch.Tensor | None:
        """M-RoPE: a frame is a 2-token marker, `size - 3` of a 5x5 grid's cells (pruned: some
        cells missing), and a closing token; text (and every 1-D token) is None."""
        if not self.mrope or kind == TEXT:
            return None
        cells = torch.randperm(25, generator=torch.Generator().manual_seed(size))[:size - 3].sort().values
        return frame_layout(2, cells, (5, 5), 1)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.get_input_embeddings()(ids[None])[0].detach()

    def frame(self, seed: int, tokens: int) -> torch.Tensor:
        # Stand-in visual tokens: embeddings of random tokens, mixed, at the scale of real ones.
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, self.decoder.config.vocab_size, (tokens,), generator=g)
        return self.embed(ids) + 0.5 * self.embed(ids.roll(1))


@pytest.fixture(params=["tiny", "tiny-smolvlm", "smollm2", "tiny-qwen2vl"])
def model(request, tiny_model, prose):
    if request.param == "tiny":
        ids = tiny_model.tokenize(prose[:4000])[0]
        return Decoder("tiny", tiny_model.decoder, tiny_model.lm_head, ids, atol=1e-5)
    if request.param == "tiny-smolvlm":
        smolvlm = request.getfixturevalue("tiny_smolvlm")
        ids = smolvlm.tokenize(prose[:4000])[0]
        return Decoder("tiny-smolvlm", smolvlm.decoder, smolvlm.lm_head, ids, atol=1e-5)
    if request.param == "tiny-qwen2vl":  # M-RoPE
        qwen = load_model(ModelConfig(name="tiny-qwen2vl", fallback_to_tiny=False))
        return Decoder("tiny-qwen2vl", qwen.decoder, qwen.lm_head, qwen.tokenize(prose[:4000])[0], atol=1e-5,
                       language=qwen.language)
    lm = request.getfixturevalue("smollm2")
    # Logits of this model reach about 40: float32 summation-order differences reach 1e-4.
    return Decoder("smollm2", lm.decoder, lm.lm_head, lm.tokenize(prose[:4000]), atol=5e-4)


def test_a_no_eviction_equals_transformers_forward_and_its_cache(model):
    engine = StreamingEngine(model.language, model.lm_head, CacheLayout(budget_tokens=1024), prefill_chunk=37)
    prompt, steps = model.ids[:300], model.ids[300:310]
    with torch.inference_mode():
        ours = engine.prefill_tokens(prompt, all_logits=True)  # 300 tokens in chunks of 37
        cache = DynamicCache()
        out = model.decoder(input_ids=prompt[None], cache=cache, use_cache=True)
        theirs = model.lm_head(out.last_hidden_state)[0]
        torch.testing.assert_close(ours, theirs, atol=model.atol, rtol=0)
        for token in steps:  # decode, one token at a time, against transformers' own cache
            ours = engine.prefill_tokens(token[None])
            out = model.decoder(input_ids=token[None, None], cache=cache, use_cache=True)
            torch.testing.assert_close(ours, model.lm_head(out.last_hidden_state)[0, -1], atol=model.atol, rtol=0)
    assert engine.length == 310 and engine.cache.evicted_tokens == 0


def test_a_greedy_answer_equals_transformers_generate(smollm2):
    prompt = smollm2.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"][0]
    engine = StreamingEngine(smollm2.decoder, smollm2.lm_head, CacheLayout(budget_tokens=1024))
    stops = frozenset({smollm2.tokenizer.eos_token_id})
    ours = generate(engine, engine.prefill_tokens(prompt), 12, stops)
    with torch.inference_mode():
        theirs = smollm2.hf_model.generate(prompt[None], max_new_tokens=12, do_sample=False)[0, len(prompt):]
    assert ours.token_ids == theirs.tolist()
    assert "Paris" in smollm2.tokenizer.decode(ours.token_ids)  # real weights, a real answer


def test_a_sampled_answer_equals_transformers_generate_with_the_same_seed(smollm2):
    prompt = smollm2.tokenize("Write a short poem about a robot watching the sea.\n")
    sampling = Sampling(temperature=0.8, top_p=0.9, repetition_penalty=1.3, seed=1234)
    engine = StreamingEngine(smollm2.decoder, smollm2.lm_head, CacheLayout(budget_tokens=1024))
    ours = generate(engine, engine.prefill_tokens(prompt), 20, frozenset(), sampling, prompt_ids=prompt)
    torch.manual_seed(sampling.seed)  # transformers samples from the global generator
    with torch.inference_mode():
        theirs = smollm2.hf_model.generate(
            prompt[None], max_new_tokens=20, do_sample=True, temperature=0.8, top_p=0.9, top_k=0,
            repetition_penalty=1.3, eos_token_id=None)[0, len(prompt):]
    assert ours.token_ids == theirs.tolist()
    engine.reset()
    again = generate(engine, engine.prefill_tokens(prompt), 20, frozenset(), sampling, prompt_ids=prompt)
    assert again.token_ids == ours.token_ids  # seeded per answer: reproducible


def _stream(model, layout, events, check_every=True):
    """Feed events to the engine and the reference side by side; returns both last logits."""
    engine = StreamingEngine(model.language, model.lm_head, layout, prefill_chunk=23)
    reference = KeptTokensReference(model.decoder, model.lm_head, mrope=model.mrope)
    text_at = 0
    ours = theirs = None
    for kind, size, stamp in events:
        if kind == FRAME:
            embeds = model.frame(stamp, size)
        else:
            embeds = model.embed(model.ids[text_at:text_at + size])
            text_at += size
        reference.evict(engine.cache.make_room(size, kind, stamp))
        rows = model.layout(kind, size)
        with torch.inference_mode():
            ours = engine.prefill(embeds, logits=True, kind=kind, stamp_ns=stamp, evict=False, layout=rows)
        theirs = reference.feed(embeds, rows)[-1]
        if check_every:
            torch.testing.assert_close(ours, theirs, atol=model.atol, rtol=0)
        assert reference.length == engine.length <= layout.budget_tokens
    return engine, ours, theirs


def _events(frames: int, frame_tokens: int, text_every: int = 3, text_tokens: int = 9):
    events = [(TEXT, 12, 0)]
    for i in range(1, frames + 1):
        events.append((FRAME, frame_tokens, i * S))
        if i % text_every == 0:
            events.append((TEXT, text_tokens, 0))
    return events


def test_b_after_evictions_equals_full_attention_over_the_kept_tokens(model):
    layout = CacheLayout(budget_tokens=160, sink_tokens=4, text_sink_tokens=6, text_window_tokens=15,
                         vision_window_s=4.0)
    engine, ours, theirs = _stream(model, layout, _events(frames=14, frame_tokens=24))
    assert engine.cache.evicted_tokens > 200  # evictions of frames and of text happened
    assert engine.frame_stamps == [11 * S, 12 * S, 13 * S, 14 * S]
    # And eviction mattered: full attention over everything gives other logits.
    everything = KeptTokensReference(model.decoder, model.lm_head, mrope=model.mrope)
    text_at = 0
    for kind, size, stamp in _events(frames=14, frame_tokens=24):
        embeds = model.frame(stamp, size) if kind == FRAME else model.embed(model.ids[text_at:text_at + size])
        text_at += size if kind == TEXT else 0
        full = everything.feed(embeds, model.layout(kind, size))[-1]
    assert float((full - ours).abs().max()) > 100 * model.atol


def test_c_sinks_survive_any_number_of_evictions(tiny_model):
    model = Decoder("tiny", tiny_model.decoder, tiny_model.lm_head, torch.arange(40) + 5, atol=1e-5)
    layout = CacheLayout(budget_tokens=120, sink_tokens=4, text_sink_tokens=8, text_window_tokens=10,
                         vision_window_frames=2)
    engine = StreamingEngine(model.decoder, model.lm_head, layout)
    engine.prefill_tokens(model.ids[:20], logits=False)
    sinks = engine.cache.buffers.keys[:, :, :12].clone(), engine.cache.buffers.values[:, :, :12].clone()
    for i in range(1, 301):
        engine.prefill(model.frame(i, 30), logits=False, kind=FRAME, stamp_ns=i * S)
        if i % 10 == 0:
            engine.prefill_tokens(model.ids[20:27], logits=False)
    assert engine.cache.evicted_tokens > 300 * 30 - 120
    assert torch.equal(engine.cache.buffers.keys[:, :, :12], sinks[0])
    assert torch.equal(engine.cache.buffers.values[:, :, :12], sinks[1])
    assert engine.cache.policy.spans[0].pinned and engine.cache.policy.spans[0].length == 12


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    layout=st.builds(CacheLayout, budget_tokens=st.integers(80, 200), sink_tokens=st.integers(0, 6),
                     text_sink_tokens=st.integers(0, 10), text_window_tokens=st.integers(0, 30),
                     vision_window_s=st.sampled_from([0.0, 3.0]), vision_window_frames=st.integers(0, 4)),
    stream=st.lists(st.one_of(
        st.tuples(st.just(FRAME), st.integers(1, 30)),
        st.tuples(st.just(TEXT), st.integers(1, 12)),
        st.tuples(st.just("ask"), st.integers(1, 8)),
    ), min_size=1, max_size=25),
)
def test_d_random_streams_keep_budget_and_slots_hold_the_right_keys(tiny_model, layout, stream):
    model = Decoder("tiny", tiny_model.decoder, tiny_model.lm_head, torch.arange(200) % 90 + 5, atol=1e-5)
    engine = StreamingEngine(model.decoder, model.lm_head, layout, prefill_chunk=16)
    pointers = engine.cache.buffers.keys.data_ptr(), engine.cache.buffers.values.data_ptr()
    layer0 = model.decoder.layers[0]
    shadow: list[torch.Tensor] = []  # each slot's layer-0 input embedding (its key depends on nothing else)
    stamp, text_at = 0, 0
    for kind, size in stream:
        if kind == "ask":  # a question, then a greedy answer of up to 6 tokens, room reserved once
            size += 6
        if size > engine.room:
            continue
        if kind == FRAME:
            stamp += S
            embeds = model.frame(stamp, size)
        else:
            embeds = model.embed(model.ids[text_at % 150:text_at % 150 + size])
            text_at += size
        removed = engine.cache.make_room(size, TEXT if kind == "ask" else kind, stamp)
        gone = {s for start, n in removed for s in range(start, start + n)}
        shadow = [e for i, e in enumerate(shadow) if i not in gone]
        if kind == "ask":
            logits = engine.prefill(embeds[:-6], evict=False)
            answer = generate(engine, logits, 6, frozenset())
            fed = answer.token_ids[:-1]  # the last generated token is not fed back
            embeds = torch.cat([embeds[:-6], model.embed(torch.tensor(fed, dtype=torch.long))]) if fed else embeds[:-6]
        else:
            engine.prefill(embeds, logits=False, kind=kind, stamp_ns=stamp, evict=False)
        shadow += list(embeds)
        assert engine.length == len(shadow) <= layout.budget_tokens
        engine.cache.policy.check()
    if shadow:
        with torch.inference_mode():
            h = layer0.input_layernorm(torch.stack(shadow))
            expected = layer0.self_attn.k_proj(h).view(len(shadow), engine.kv_heads, engine.head_dim).transpose(0, 1)
        stored = engine.keys_before_rope(slice(0, len(shadow)))[0]  # as projected, whatever moved
        torch.testing.assert_close(stored, expected, atol=1e-5, rtol=0)
    assert (engine.cache.buffers.keys.data_ptr(), engine.cache.buffers.values.data_ptr()) == pointers
