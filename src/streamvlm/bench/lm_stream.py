"""StreamingLLM's perplexity experiment (arXiv 2309.17453, sec. 4.1) on real weights, offline.

One long text is read in chunks through three caches:
- full attention: every token stays (the reference), over as many tokens as the model
  was trained for (its max_position_embeddings), since past that RoPE extrapolates and
  the comparison would measure that instead of the cache;
- window: the most recent `budget` tokens only;
- sinks + window: the first `sinks` tokens kept, plus the most recent `budget - sinks`.
Before each chunk the streamed caches evict to make room for it, so each token sees
between `budget - chunk` and `budget` tokens (StreamingLLM fed one token at a time; a
small chunk is the same experiment at a fraction of the time).

The default text is the set of license texts that every Debian and Ubuntu system ships
(base-files), about 55k tokens of English; `--text FILE` takes any other.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from streamvlm.bench.measure import Timer, progress
from streamvlm.llm.engine import StreamingEngine
from streamvlm.llm.kv_cache import CacheLayout
from streamvlm.llm.reference import FullAttentionEngine

LICENSES = Path("/usr/share/common-licenses")


def default_text() -> str:
    if not LICENSES.is_dir():
        raise FileNotFoundError(f"{LICENSES} not found: give a long text file with --text")
    seen, parts = set(), []
    for path in sorted(LICENSES.iterdir()):
        real = path.resolve()  # GPL -> GPL-3 and the like: each text once
        if real.is_file() and real not in seen:
            seen.add(real)
            parts.append(real.read_text(errors="replace"))
    return "\n\n".join(parts)


def run(args) -> dict:
    from streamvlm.models.text_lm import load_text_lm

    if args.chunk >= args.budget - args.sinks:
        raise ValueError("--chunk must be smaller than --budget minus --sinks")
    lm = load_text_lm(args.model)
    text = args.text.read_text(errors="replace") if args.text else default_text()
    ids = lm.tokenize(text)
    if len(ids) < args.tokens:
        raise ValueError(f"the text has {len(ids)} tokens; --tokens asks for {args.tokens}")
    ids = ids[:args.tokens]
    fits = min(len(ids), lm.decoder.config.max_position_embeddings)

    full = FullAttentionEngine(lm.decoder, lm.lm_head)
    window = StreamingEngine(lm.decoder, lm.lm_head, _layout(args.budget, 0), prefill_chunk=args.chunk)
    sink = StreamingEngine(lm.decoder, lm.lm_head, _layout(args.budget, args.sinks), prefill_chunk=args.chunk)
    nll_full, ms_full = _stream(full, ids[:fits], args.chunk, "full attention")
    nll_window, ms_window = _stream(window, ids, args.chunk, "window")
    nll_sink, ms_sink = _stream(sink, ids, args.chunk, "sinks + window")
    span = fits - 1  # predictions within the span full attention covers
    return {
        "ppl_full": _ppl(nll_full),
        "ppl_window": _ppl(nll_window),
        "ppl_sink_window": _ppl(nll_sink),
        "tokens": len(ids),
        "budget": args.budget,
        "sinks": args.sinks,
        "full_tokens": fits,
        "same_span_ppl_window": _ppl(nll_window[:span]),
        "same_span_ppl_sink_window": _ppl(nll_sink[:span]),
        "sink_window_over_full": round(_ppl(nll_sink[:span]) / _ppl(nll_full), 4),
        "window_over_full": round(_ppl(nll_window[:span]) / _ppl(nll_full), 4),
        "ms_per_token": {"full": ms_full, "window": ms_window, "sink_window": ms_sink},
        "model": args.model,
        "chunk": args.chunk,
        "text": str(args.text) if args.text else str(LICENSES),
    }


def _layout(budget: int, sinks: int) -> CacheLayout:
    # Text only: no text sink, and the text window is everything the sinks leave.
    return CacheLayout(budget_tokens=budget, sink_tokens=sinks, text_sink_tokens=0,
                       text_window_tokens=budget - sinks, vision_window_s=0.0)


def _stream(engine, ids: torch.Tensor, chunk: int, label: str) -> tuple[torch.Tensor, float]:
    """Negative log-likelihood of ids[1:] [N-1], and milliseconds per token."""
    losses = []
    previous = None  # logits [V] that predict the first token of the next chunk
    bar = progress(len(ids), label)
    with Timer() as timer:
        for start in range(0, len(ids), chunk):
            piece = ids[start:start + chunk]
            logits = engine.prefill_tokens(piece, all_logits=True)  # [t, V]
            predictors = logits[:-1] if previous is None else torch.cat([previous[None], logits[:-1]])
            targets = piece[1:] if previous is None else piece
            losses.append(torch.nn.functional.cross_entropy(predictors, targets, reduction="none"))
            previous = logits[-1]
            bar.update(len(piece))
    bar.close()
    return torch.cat(losses), round(timer.ms / len(ids), 3)


def _ppl(nll: torch.Tensor) -> float:
    return round(math.exp(float(nll.mean())), 3)
