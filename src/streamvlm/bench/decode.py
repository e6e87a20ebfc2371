"""Decode speed: this engine against transformers' `generate`, same model, same context.

Both sides run the same greedy decode of `--tokens` tokens after the same `--context`
prompt tokens, with no stop token. A run's decode time is its total time minus the time
of a run that stops after the first token (so prefill and set-up cancel out on both
sides), divided by the tokens after the first. Runs of both are interleaved `--repeats`
times; medians are reported.

Roofline: a decode step reads every weight of the decoder and the output head once, and
the context's keys and values; `bytes_per_token` over the step's time is the memory rate
each side reaches (`gbps`), against the device's measured copy rate (`copy_gbps`: a large
tensor copied, read + written bytes over time) and, on a GPU in the table, its datasheet
bandwidth (`streamvlm.bench.peak`). Decode of a small model is bound by that rate, not by
arithmetic: on the 2-core CPU the weight matmuls were 83% of a step (torch.profiler).
"""

from __future__ import annotations

import time

import torch

from streamvlm.bench.lm_stream import default_text
from streamvlm.bench.measure import median, pick_device, progress
from streamvlm.bench.peak import bandwidth
from streamvlm.llm.decoding import generate
from streamvlm.llm.engine import StreamingEngine
from streamvlm.llm.kv_cache import CacheLayout


def run(args) -> dict:
    if args.tokens < 2:
        raise ValueError("--tokens must be at least 2")
    device = pick_device(args.device)
    dtype = getattr(torch, args.dtype)
    decoder, lm_head, hf_model, ids = _load(args.model, args.context, dtype, device)
    layout = CacheLayout(budget_tokens=args.context + args.tokens + 16, text_sink_tokens=0,
                         text_window_tokens=args.context + args.tokens + 16)
    engine = StreamingEngine(decoder, lm_head, layout)

    def ours(n: int) -> float:
        engine.reset()
        _sync(device)
        start = time.perf_counter()
        generate(engine, engine.prefill_tokens(ids), n, frozenset())
        _sync(device)
        return time.perf_counter() - start

    def theirs(n: int) -> float:
        _sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            hf_model.generate(ids[None], max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
        _sync(device)
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
    step_bytes = _bytes_per_token(decoder, lm_head, int(ids.numel()) + args.tokens // 2)
    return {
        "ms_per_token": round(mine, 3),
        "hf_ms_per_token": round(hf, 3),
        "ratio": round(hf / mine, 3),
        "bytes_per_token": step_bytes,
        "gbps": {"ours": round(step_bytes / mine / 1e6, 2), "transformers": round(step_bytes / hf / 1e6, 2)},
        **bandwidth(device),
        "device": device,
        "dtype": args.dtype,
        "model": args.model,
        "context": int(ids.numel()),
        "tokens": args.tokens,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _bytes_per_token(decoder, lm_head, context: int) -> int:
    """What one decode step reads: every weight once (the input embedding only a row; tied to
    the output head, it is read there in full) and the context's keys and values."""
    embedding = decoder.get_input_embeddings().weight
    weights = {p.data_ptr(): p.numel() * p.element_size() for p in decoder.parameters() if p is not embedding}
    weights[lm_head.weight.data_ptr()] = lm_head.weight.numel() * lm_head.weight.element_size()
    config = decoder.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * embedding.element_size()
    return sum(weights.values()) + context * kv


def _load(name: str, context: int, dtype: torch.dtype, device: str):
    """(decoder, lm_head, the transformers model that `generate` runs, prompt ids [context])."""
    if name == "tiny":
        from streamvlm.config import ModelConfig
        from streamvlm.models import load_model

        vlm = load_model(ModelConfig(name="tiny", fallback_to_tiny=False, dtype=str(dtype).split(".")[-1],
                                     device=device))
        tokenize = lambda text: vlm.tokenize(text)[0]  # noqa: E731
        # The language model alone, as transformers' causal LM around the same modules.
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_config(vlm.decoder.config)
        hf.model, hf.lm_head = vlm.decoder, vlm.lm_head
        decoder, lm_head, hf_model = vlm.decoder, vlm.lm_head, hf.eval()
    else:
        from streamvlm.models.text_lm import load_text_lm

        lm = load_text_lm(name, dtype, device)
        tokenize, decoder, lm_head, hf_model = lm.tokenize, lm.decoder, lm.lm_head, lm.hf_model
    ids = tokenize(default_text())[:context].to(device)
    if ids.numel() < context:
        raise ValueError(f"only {ids.numel()} tokens of text for --context {context}")
    return decoder, lm_head, hf_model, ids
