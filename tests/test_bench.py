"""The benchmark commands run and print what they promise, at small sizes.

Their figures are measured, not asserted here: tests never judge wall-clock times. What
is checked is that each compared mode ran, over the sizes asked for.
"""

from __future__ import annotations

import json
import math

from conftest import ROOT
from test_cli import streamvlm


def _bench(*args: str) -> dict:
    result = streamvlm("bench", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_lm_stream_runs_three_caches_over_the_text():
    out = _bench("lm-stream", "--tokens", "400", "--budget", "128", "--sinks", "4", "--chunk", "16",
                 "--text", str(ROOT / "README.md"))
    assert out["tokens"] == 400 and out["full_tokens"] == 400 and out["budget"] == 128
    for key in ("ppl_full", "ppl_window", "ppl_sink_window"):
        assert 1.0 < out[key] < 1e6 and math.isfinite(out[key])
    # While nothing is evicted all three are the same computation; past the budget they part.
    assert out["ppl_window"] != out["ppl_sink_window"]


def test_kv_runs_budgeted_and_baseline_and_stops_the_baseline_at_its_cap():
    out = _bench("kv", "--frames", "320", "--baseline-max-mb", "4", "--tokens-per-frame", "32")
    budgeted, baseline = out["budgeted"], out["baseline"]
    assert out["frames"] == budgeted["frames"] == 320
    assert budgeted["context_tokens_end"] <= out["budget"] and not budgeted["stopped_at_memory_cap"]
    assert baseline["stopped_at_memory_cap"] and baseline["context_tokens_end"] * out["kv_bytes_per_token"] > 4 * 2**20
    assert out["latency_ratio"] > 0 and out["baseline_latency_ratio"] > 0 and out["memory_growth"] is not None


def test_decode_compares_with_transformers_generate():
    out = _bench("decode", "--model", "tiny", "--context", "64", "--tokens", "6", "--repeats", "2")
    assert out["context"] == 64 and out["tokens"] == 6
    assert out["ms_per_token"] > 0 and out["hf_ms_per_token"] > 0
    assert math.isclose(out["ratio"], out["hf_ms_per_token"] / out["ms_per_token"], rel_tol=0.01)
