"""Decode speed: this engine against transformers' `generate`, same model, same context.

Both sides run the same greedy decode of `--tokens` tokens after the same `--context`
prompt tokens, with no stop token. A run's decode time is its total time minus the time
of a run that stops after the first token (so prefill and set-up cancel out on both
sides), divided by the tokens after the first. Runs of both are interleaved `--repeats`
times; medians are reported.
"""

from __future__ import annotations

import time

import torch

from streamvlm.bench.lm_stream import default_text
from streamvlm.bench.measure import median, progress
from streamvlm.llm.decoding import generate
from streamvlm.llm.engine import StreamingEngine
from streamvlm.llm.kv_cache import CacheLayout


def run(args) -> dict:
    if args.tokens < 2:
        raise ValueError("--tokens must be at least 2")
    decoder, lm_head, hf_model, ids = _load(args.model, args.context)
    layout = CacheLayout(budget_tokens=args.context + args.tokens + 16, text_sink_tokens=0,
                         text_window_tokens=args.context + args.tokens + 16)
    engine = StreamingEngine(decoder, lm_head, layout)

    def ours(n: int) -> float:
        engine.reset()
        start = time.perf_counter()
        generate(engine, engine.prefill_tokens(ids), n, frozenset())
        return time.perf_counter() - start

    def theirs(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            hf_model.generate(ids[None], max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
        return time.perf_counter() - start

    ours(4), theirs(4)  # warm-up: first calls allocate and pick kernels
    ms_ours, ms_theirs = [], []
    bar = progress(args.repeats, "decode")
    for _ in range(args.repeats):
        ms_ours.append((ours(args.tokens) - ours(1)) * 1e3 / (args.tokens - 1))
        ms_theirs.append((theirs(args.tokens) - theirs(1)) * 1e3 / (args.tokens - 1))
        bar.update()
    bar.close()
    mine, hf = median(ms_ours), median(ms_theirs)
    return {
        "ms_per_token": round(mine, 3),
        "hf_ms_per_token": round(hf, 3),
        "ratio": round(hf / mine, 3),
        "model": args.model,
        "context": int(ids.numel()),
        "tokens": args.tokens,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
    }


def _load(name: str, context: int):
    """(decoder, lm_head, the transformers model that `generate` runs, prompt ids [context])."""
    if name == "tiny":
        from streamvlm.config import ModelConfig
        from streamvlm.models import load_model

        vlm = load_model(ModelConfig(name="tiny", fallback_to_tiny=False))
        tokenize = lambda text: vlm.tokenize(text)[0]  # noqa: E731
        # The language model alone, as transformers' causal LM around the same modules.
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_config(vlm.decoder.config)
        hf.model, hf.lm_head = vlm.decoder, vlm.lm_head
        decoder, lm_head, hf_model = vlm.decoder, vlm.lm_head, hf.eval()
    else:
        from streamvlm.models.text_lm import load_text_lm

        lm = load_text_lm(name)
        tokenize, decoder, lm_head, hf_model = lm.tokenize, lm.decoder, lm.lm_head, lm.hf_model
    ids = tokenize(default_text())[:context]
    if ids.numel() < context:
        raise ValueError(f"only {ids.numel()} tokens of text for --context {context}")
    return decoder, lm_head, hf_model, ids
