"""The benchmark commands run and print what they promise, at small sizes.

Their figures are measured, not asserted here: tests never judge wall-clock times. What
is checked is that each compared mode ran, over the sizes asked for.
"""

from __future__ import annotations

import json
import math

import pytest

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
    # the roofline: bytes a step reads over its time, and the device's own copy rate to compare with
    assert out["bytes_per_token"] > 0 and out["copy_gbps"] > 0 and out["device"] == "cpu"
    assert math.isclose(out["gbps"]["ours"], out["bytes_per_token"] / out["ms_per_token"] / 1e6, rel_tol=0.01)


def _moving_square_video(path, frames: int = 8):
    import cv2
    import numpy as np

    background = np.random.default_rng(1).integers(0, 256, (192, 192, 3), dtype=np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (192, 192))
    for t in range(frames):
        frame = background.copy()
        frame[20 + 8 * t:60 + 8 * t, 40:80] = 255
        writer.write(frame)
    writer.release()
    return path


def test_vision_compares_cache_and_full_vit_on_a_video(tmp_path):
    video = _moving_square_video(tmp_path / "square.avi")
    out = _bench("vision", "--video", str(video), "--frames", "8", "--size", "tiny")
    assert out["frames"] == 8 and out["mode"] == "threshold"
    assert 0 < out["flop_ratio"] < 1 and 0 < out["reuse_ratio"] < 1 and out["changed_patches"] > 0
    assert 0 <= out["recall"] <= 1 and out["cosine_p01"] <= out["cosine_mean"] <= 1.0001
    # In its lossless setting the cache's output is the full ViT's.
    exact = _bench("vision", "--video", str(video), "--frames", "8", "--size", "tiny", "--threshold", "0",
                   "--drift-bound", "0")
    assert exact["cosine_p01"] > 0.99999 and exact["settings"]["drift_bound"] == 0.0
    stc = _bench("vision", "--video", str(video), "--frames", "8", "--size", "tiny", "--mode", "stc")
    assert abs(stc["reuse_ratio"] - 0.375) < 0.001  # half the frames refresh, the others skip 75%
    # A random SigLIP of a released size, what `bench all` measures, comes by another path.
    base = _bench("vision", "--video", str(video), "--frames", "2", "--size", "base")
    assert base["frames"] == 2 and base["gflop_per_frame"]["full"] >= base["gflop_per_frame"]["cached"] > 0


def test_prune_compares_pruned_and_unpruned_prefill_and_answers(tmp_path):
    video = _moving_square_video(tmp_path / "square.avi")
    common = ("--video", str(video), "--frames", "8", "--fps", "0", "--question-every", "4", "--synth-frames", "13")
    stc = _bench("prune", *common, "--mode", "stc", "--keep-tokens", "60")
    assert stc["frames"] == 8 and stc["tokens_mean"] == stc["tokens_p95"] == 60 and stc["questions"] == 2
    assert stc["prefill_ratio"] > 0 and stc["kl"] >= 0 and 0 <= stc["appearance_recall"] <= 1
    assert stc["synthetic"]["appearances"] == 3 and stc["synthetic"]["cells"] > 0
    # Keep-all: the pruned pipeline is the unpruned one, so its answers agree exactly.
    keep_all = _bench("prune", *common, "--mode", "adaptive", "--min-tokens", "196", "--keep-tokens", "196")
    assert keep_all["tokens_mean"] == 196 and keep_all["appearance_recall"] == 1.0
    assert keep_all["top1_agreement"] == 1.0 and keep_all["kl"] == 0.0


def test_answer_compares_reprefill_full_and_memory_and_fills_the_ceiling():
    out = _bench("answer", "--frames", "24", "--questions", "1", "--budget", "1024", "--tokens-per-frame", "32",
                 "--answer-tokens", "4", "--ceiling-mb", "1.25", "--capacity-limit", "3000")
    assert set(out["ttft_ms"]) == {"reprefill", "full", "memory"} and min(out["ttft_ms"].values()) > 0
    assert out["speedup_vs_reprefill"] > 0 and out["memory_frames_at_questions"] > 0
    full, memory = out["capacity"]["full"], out["capacity"]["memory"]
    assert full["reached_ceiling"] and memory["reached_ceiling"] and memory["under_ceiling"]
    # tiny: 512 B of KV a token, 16 KiB a frame; the stream's first text tokens take a little
    assert out["capacity_frames"]["full"] == full["frames"] and 78 <= full["frames"] <= 80
    assert full["bytes"] > 1.25 * 2**20 >= memory["bytes"] and out["capacity_ratio"] > 1


def test_backends_compares_torch_and_onnxruntime_on_a_video(tmp_path):
    video = _moving_square_video(tmp_path / "square.avi")
    out = _bench("backends", "--video", str(video), "--frames", "6", "--size", "tiny")
    assert set(out["backends"]) == {"torch", "onnxruntime"} and out["frames"] == 6
    assert all(m["full_ms"] > 0 and m["delta_ms"] > 0 for m in out["backends"].values())
    assert max(out["max_abs_diff"].values()) < 1e-4 and out["running"]["onnxruntime"].startswith("onnxruntime")
    torch_ms, ort_ms = out["backends"]["torch"], out["backends"]["onnxruntime"]
    assert math.isclose(out["ort_vs_torch_full"], torch_ms["full_ms"] / ort_ms["full_ms"], rel_tol=0.02)


def test_qa_runs_every_mode_on_the_same_questions():
    out = _bench("qa", "--model", "tiny", "--config", str(ROOT / "config" / "live.yaml"), "--streams", "1",
                 "--minutes", "0.5", "--short-minutes", "0.5", "--every", "3")
    modes = out["modes"]
    assert list(modes) == ["reference", "delta_stc", "delta_threshold", "prune_stc", "prune_adaptive",
                           "window_only", "sink_windows", "memory_retrieval"]
    asked = sum(out["questions"].values())
    assert asked >= 6 and "needle" not in out["questions"]  # needles need a stream of 10 minutes
    for row in modes.values():
        assert row["questions"] == asked and 0.0 <= row["accuracy"] <= 1.0
        assert set(row["by_type"]) == set(out["questions"]) == set(row["questions_by_type"])
        low, high = row["interval"]["accuracy"]
        assert low <= row["accuracy"] <= high and high - low > 0.1  # a handful of questions: a wide interval
    assert modes["reference"]["retained_short_range"] in (1.0, None)
    assert set(out["chance"]) == set(out["questions"])


def test_qa_asks_needles_late_and_says_whether_their_frame_was_attended_to(tmp_path):
    from streamvlm.bench.qa_record import README_BEGIN, README_END

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{README_BEGIN}\nold figures\n{README_END}\nafter\n")
    out = _bench("qa", "--model", "tiny", "--config", str(ROOT / "config" / "live.yaml"), "--streams", "1",
                 "--minutes", "1.5", "--short-minutes", "0.2", "--needle-minutes", "1.2", "--every", "4",
                 "--modes", "reference", "memory_retrieval", "--out", str(tmp_path / "qa"), "--readme", str(readme))
    # The measurement is kept with its provenance, and README's section is its table.
    record = json.loads((tmp_path / "qa" / "qa.json").read_text())
    assert record["result"] == out and record["command"].startswith("streamvlm bench qa --model tiny")
    table = (tmp_path / "qa" / "qa.md").read_text()
    assert "| memory_retrieval |" in table and "Needle answers that attended" in table
    text = readme.read_text()
    assert "old figures" not in text and "| reference |" in text and text.endswith(f"{README_END}\nafter\n")
    needles = out["questions"]["needle"]
    assert needles >= 2 and out["modes"]["memory_retrieval"]["questions_by_type"]["needle"] == needles
    assert "needle" not in out["modes"]["reference"]["by_type"]  # full attention stops at --short-minutes
    attended = out["modes"]["memory_retrieval"]["needle_frame_attended"]
    assert attended is not None and 0.0 <= attended <= 1.0
    assert out["modes"]["reference"]["needle_frame_attended"] is None


def test_the_accuracy_interval_is_wilsons():
    from streamvlm.bench.qa import wilson

    assert wilson([1] * 8 + [0] * 2) == [0.4902, 0.9433]
    assert wilson([1] * 300) == [0.9874, 1.0] and wilson([0] * 5)[0] == 0.0 and wilson([]) is None


def test_soak_streams_through_both_workers_and_accounts_for_every_question():
    out = _bench("soak", "--frames", "300", "--question-every", "100", "--burst", "20", "--queue", "8",
                 "--distinct", "20", "--budget", "1024", "--caption-every", "10")
    assert out["frames"] == out["frames_ingested"] == 300 and out["frames_dropped"] == 0
    # Three bursts of 20 questions and an empty one, against a queue of 8.
    assert out["answered"] + out["rejected"] == 3 * 21 and out["lost"] == 0 and out["crashes"] == 0
    assert out["answered"] >= 3 * 8 and out["rejected_busy"] >= 1 and out["rejected"] >= 3 + out["rejected_busy"]
    assert out["captions"] >= 1 and out["kv_tokens"] <= 1024 and math.isfinite(out["rss_growth"])


def test_a_sweep_runs_its_base_mode_once_per_value():
    import argparse

    from streamvlm.bench.qa import _plan
    from streamvlm.config import PipelineConfig

    args = argparse.Namespace(modes=["reference"], sweep=["language.memory.keep_ratio=0.1,1"],
                              sweep_base="memory_retrieval")
    plan = _plan(args, PipelineConfig())
    assert list(plan) == ["reference", "language.memory.keep_ratio=0.1", "language.memory.keep_ratio=1"]
    (low, low_long), (high, _) = plan["language.memory.keep_ratio=0.1"], plan["language.memory.keep_ratio=1"]
    assert low.language.memory.keep_ratio == 0.1 and high.language.memory.keep_ratio == 1.0 and low_long
    assert low.language.cache.budget_tokens > 0 and not plan["reference"][1]  # the base's bounded context
    # A sweep may name its own base mode, so one run sweeps several modes against one reference.
    args = argparse.Namespace(modes=["reference"], sweep=["prune_adaptive:vision.prune.novelty=0.05",
                                                          "vision.delta.threshold=0.06"], sweep_base="delta_threshold")
    plan = _plan(args, PipelineConfig())
    assert list(plan) == ["reference", "prune_adaptive:vision.prune.novelty=0.05", "vision.delta.threshold=0.06"]
    novelty, threshold = plan["prune_adaptive:vision.prune.novelty=0.05"][0], plan["vision.delta.threshold=0.06"][0]
    assert novelty.vision.prune.mode == "adaptive" and novelty.vision.prune.novelty == 0.05
    assert novelty.vision.delta.mode == "off" and threshold.vision.delta.threshold == 0.06
    assert threshold.vision.delta.mode == "threshold" and threshold.vision.prune.mode == "off"
    with pytest.raises(ValueError, match="unknown modes"):
        _plan(argparse.Namespace(modes=None, sweep=["nope:vision.prune.novelty=0.05"], sweep_base="reference"),
              PipelineConfig())
    with pytest.raises(ValueError, match="keep_ratio"):
        _plan(argparse.Namespace(modes=None, sweep=["language.memory.keep_ratio=0"], sweep_base="memory_retrieval"),
              PipelineConfig())
    # Settings joined by & change together: every combination of their values is a mode.
    args = argparse.Namespace(modes=None, sweep=["memory_retrieval:language.memory.keep_ratio=0.1,0.25"
                                                 "&language.memory.dtype=int4"], sweep_base="reference")
    plan = _plan(args, PipelineConfig())
    assert list(plan) == ["memory_retrieval:language.memory.keep_ratio=0.1&language.memory.dtype=int4",
                          "memory_retrieval:language.memory.keep_ratio=0.25&language.memory.dtype=int4"]
    both = plan["memory_retrieval:language.memory.keep_ratio=0.1&language.memory.dtype=int4"][0].language.memory
    assert (both.keep_ratio, both.dtype) == (0.1, "int4")
    with pytest.raises(ValueError, match="wants"):
        _plan(argparse.Namespace(modes=None, sweep=["language.memory.dtype=int4&top_k"], sweep_base="reference"),
              PipelineConfig())


def test_alerts_scores_checks_against_the_scenes_truth():
    """Threshold 0: every check says yes, so check recall is 1 and check precision is the
    base rate; each rule fires once (its first check), right only if it held then. At
    threshold 1 nothing fires (a random model is never sure), scored from the same checks. The
    scheduled mode checks less often than every frame."""
    args = ("alerts", "--model", "tiny", "--config", str(ROOT / "config" / "live.yaml"), "--streams", "1",
            "--minutes", "0.5")
    out = _bench(*args, "--threshold", "0.0", "1.0")
    rows = {(row["mode"], row["threshold"]): row for row in out["rows"]}
    every, scheduled = rows["every_frame", 0.0], rows["scheduled", 0.0]
    assert every["checks"] == 30 * 3 and scheduled["checks"] < every["checks"]
    assert every["check_recall"] == 1.0 and every["check_precision"] == every["base_rate"]
    assert every["alerts"] == 3 and every["onsets"] >= 1
    never = rows["every_frame", 1.0]
    assert never["checks"] == every["checks"] and never["alerts"] == 0 and never["check_recall"] == 0.0
    with pytest.raises(AssertionError, match="can check"):
        _bench(*args, "--rule", "a person is visible")
