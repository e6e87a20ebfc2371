"""Every model family's tiny model runs through the commands a user runs: `bench vision`,
`bench prune`, `bench answer`, `replay` and `export onnx` (figures are not judged, only that each ran the
sizes asked for with that family's geometry)."""

from __future__ import annotations

import json

import pytest

from conftest import SAMPLE_BAG
from test_bench import _bench
from test_cli import streamvlm

# name -> LLM tokens per frame (its pooled / merged grid)
FAMILIES = {"tiny-smolvlm": 64, "tiny-qwen2vl": 16, "tiny-qwen25vl": 16}

FAMILY = pytest.mark.parametrize("model", sorted(FAMILIES))


@FAMILY
def test_bench_vision_runs_the_familys_tower(model):
    out = _bench("vision", "--video", "synth:0", "--frames", "4", "--model", model, "--device", "cpu")
    assert out["model"] == model and out["frames"] == 4


@FAMILY
def test_bench_prune_runs_on_the_familys_tokens(model):
    tokens = FAMILIES[model]
    out = _bench("prune", "--video", "synth:0", "--frames", "4", "--fps", "0", "--question-every", "2",
                 "--synth-frames", "8", "--model", model, "--mode", "stc", "--keep-tokens", str(tokens // 2))
    assert out["frames"] == 4 and out["tokens_mean"] == tokens // 2 and out["questions"] == 2


@FAMILY
def test_bench_answer_runs_the_familys_decoder(model):
    out = _bench("answer", "--model", model, "--frames", "12", "--questions", "1", "--budget", "1024",
                 "--tokens-per-frame", str(FAMILIES[model]), "--answer-tokens", "3", "--ceiling-mb", "1",
                 "--capacity-limit", "400")
    assert set(out["ttft_ms"]) == {"reprefill", "full", "memory"} and out["capacity_ratio"] > 0


@FAMILY
def test_replay_answers_with_the_family(model):
    result = streamvlm("replay", str(SAMPLE_BAG), "--ask", "What is happening?", "--at", "4", "--model", model,
                       "--json", "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    answers = [r for r in map(json.loads, result.stdout.splitlines()) if r["type"] == "answer"]
    assert len(answers) == 1 and answers[0]["stamp"] == 4.0


@pytest.mark.parametrize("model_type", ["qwen3_vl", "some_future_vlm"])
def test_a_family_the_engine_cannot_run_is_refused_with_the_reason(tmp_path, model_type):
    from streamvlm.config import ModelConfig
    from streamvlm.models import ModelUnavailable, load_model

    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(ModelUnavailable) as refused:
        load_model(ModelConfig(name=str(tmp_path), fallback_to_tiny=False))
    reason = str(refused.value)
    assert ("DeepStack" in reason) if model_type == "qwen3_vl" else ("qwen2_vl" in reason and "smolvlm" in reason)


@FAMILY
def test_export_onnx_of_the_familys_tower_matches_torch(model, tmp_path):
    result = streamvlm("export", "onnx", "--model", model, "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    diff = json.loads(result.stdout.splitlines()[-1])["max_abs_diff"]
    assert diff["full"] < 1e-4 and diff["delta"] < 1e-4
