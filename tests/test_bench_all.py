"""`streamvlm bench all` in pieces: its plan, a step in its own process, and the report,
plots and README section built from real (small) bench results.

Figures are measured, not asserted: what is checked is that every table and plot is
there, carries the measured values and the device, and that a failing step is recorded
without stopping the others.
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import ROOT

from streamvlm.bench import plots, suite
from streamvlm.bench.peak import peak
from streamvlm.bench.report import README_BEGIN, README_END, update_readme, write_report
from streamvlm.bench.suite import Step

SMALL = [
    Step("vision synth:0 cpu", "vision", ("--video", "synth:0", "--frames", "4", "--size", "tiny", "--device", "cpu")),
    Step("kv", "kv", ("--frames", "300", "--tokens-per-frame", "16", "--recompute-frames", "20",
                      "--baseline-max-mb", "1")),
    Step("qa", "qa", ("--model", "tiny", "--config", str(ROOT / "config" / "live.yaml"), "--streams", "1",
                      "--minutes", "0.3", "--short-minutes", "0.3", "--every", "3",
                      "--modes", "reference", "prune_adaptive", "sink_windows")),
    Step("e2e cpu", "e2e", ("--model", "tiny", "--source", "synth:1", "--frames", "6", "--caption-every", "2",
                            "--caption-tokens", "3", "--device", "cpu")),
    Step("broken", "vision", ("--video", "no/such/video.avi", "--size", "tiny")),
]


@pytest.fixture(scope="module")
def results():
    return {"date": "2026-01-01T00:00:00+00:00", "command": "streamvlm bench all --quick --out DIR",
            "machine": suite.machine(), "quick": True, "seconds": 1.0,
            "steps": {step.name: suite.run_step(step) for step in SMALL}}


def test_each_step_runs_in_its_own_process_and_a_failure_is_recorded(results):
    steps = results["steps"]
    assert "error" in steps["broken"] and "result" not in steps["broken"]
    assert "no/such/video.avi" in steps["broken"]["error"]
    for name in ("vision synth:0 cpu", "kv", "qa", "e2e cpu"):
        assert "result" in steps[name], steps[name].get("error")
        assert steps[name]["argv"] == list(next(s.argv for s in SMALL if s.name == name))


def test_e2e_measures_every_frame_and_captions(results):
    e2e = results["steps"]["e2e cpu"]["result"]
    series = e2e["series"]
    assert e2e["frames"] == 6 and all(len(v) == 6 for v in series.values())
    assert e2e["captions"] >= 2 and sum(ms > 0 for ms in series["caption_ms"]) == e2e["captions"]
    assert series["stream_s"] == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]  # 1 fps, after the 2 warm-up frames
    assert math.isclose(e2e["sustained_fps"], 6 / (sum(series["frame_ms"]) / 1e3), rel_tol=0.01)
    assert e2e["device"] == "cpu" and e2e["source"] == "synthetic panning (seed 1)"


def test_kv_recomputes_the_window_the_budgeted_cache_keeps(results):
    kv = results["steps"]["kv"]["result"]
    recompute = kv["recompute"]
    assert recompute["window_frames"] == kv["budgeted"]["frames_in_cache_end"] > 1
    assert recompute["context_tokens_end"] <= kv["budgeted"]["context_tokens_end"] + 16
    assert len(kv["series"]["recompute"]["frame_ms"]) == 20 and len(kv["series"]["budgeted"]["frame_ms"]) == 300
    assert kv["recompute_ratio"] > 0


def test_report_plots_and_readme_section_carry_the_measured_figures(results, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Performance\n\n{README_BEGIN}\nold\n{README_END}\n\n## Next\n")
    write_report(results, tmp_path, readme=readme)
    report = (tmp_path / "report.md").read_text()
    vision = results["steps"]["vision synth:0 cpu"]["result"]
    for title in ("## ViT: delta-token cache vs full recompute", "## ViT roofline", "sliding-window recompute",
                  "## Streaming QA smoke run", "## End to end (cpu)", "## Failed steps", "Peak: "):
        assert title in report
    assert f"| synthetic still (seed 0) | tiny | cpu | 4 |" in report
    assert f"{vision['speedup']:.3g}" in report
    for name in ("latency_over_time.png", "memory_over_time.png", "vit_speedup.png", "accuracy_vs_tokens.png"):
        assert (tmp_path / name).stat().st_size > 10_000 and f"]({name})" in report
    text = readme.read_text()
    assert "old" not in text and text.count(README_BEGIN) == 1 and text.endswith("## Next\n")
    assert "Measured 2026-01-01 on" in text and "End to end on cpu" in text
    update_readme(readme, "again")  # rerunning replaces, never appends
    assert readme.read_text().count(README_BEGIN) == 1 and "again" in readme.read_text()
    with pytest.raises(ValueError, match="markers"):
        update_readme(tmp_path / "report.md", "x")
    json.dumps(results)  # what results.json holds


def test_every_plot_axis_is_labelled_with_units(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for draw in (plots._latency, plots._memory, plots._vit_speedup, plots._accuracy):
        figure = draw(plt, results)
        for axis in figure.axes:
            assert axis.get_title() and axis.get_xlabel() and axis.get_ylabel()
            assert "(" in axis.get_ylabel()  # a unit or what the number counts
        plt.close(figure)


def test_the_plan_covers_every_bench_and_doubles_device_steps_on_a_gpu():
    cpu = suite.plan(quick=True, devices=["cpu"], with_qa=True)
    assert {s.bench for s in cpu} == {"vision", "prune", "kv", "decode", "answer", "qa", "e2e"}
    assert len({s.name for s in cpu}) == len(cpu)
    both = suite.plan(quick=True, devices=["cpu", "cuda"], with_qa=False)
    on_gpu = [s for s in both if "cuda" in s.argv]
    assert {s.bench for s in on_gpu} == {"vision", "e2e", "decode"} and "qa" not in {s.bench for s in both}
    assert all("bfloat16" in s.argv for s in on_gpu if s.bench != "vision")  # what an edge GPU runs
    assert suite._devices("cpu") == ["cpu"]
    if not __import__("torch").cuda.is_available():  # asked for a GPU that is not there: said, not skipped
        with pytest.raises(SystemExit, match="no CUDA"):
            suite._devices("cuda")
    assert len(suite.plan(quick=False, devices=["cpu"], with_qa=False)) > len(cpu) - 1


def test_peak_names_its_source(monkeypatch):
    import torch

    cpu = peak("cpu", "float32", 2)
    assert cpu["source"] and (cpu["gflops"] is None or cpu["gflops"] > 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert peak("cuda", "float32", 1) == {"gflops": 67000.0,
                                          "source": "NVIDIA H100 Tensor Core GPU datasheet (SXM); NVIDIA H100 80GB HBM3"}
    assert peak("cuda", "bfloat16", 1)["gflops"] == 989500.0
