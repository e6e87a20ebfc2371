"""PNG plots of a `bench all` run: latency and memory over stream time, ViT speedup per
video, accuracy against tokens. Each has labelled axes with units and names its device."""

from __future__ import annotations

from pathlib import Path

KV_LABELS = {"budgeted": "budgeted cache (sinks + windows)", "baseline": "full attention",
             "recompute": "sliding-window recompute"}


def write_plots(results: dict, out: Path) -> list[str]:
    """The plots that the results have data for; returns their file names (relative to out)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    written = []
    for name, draw in (("latency_over_time.png", _latency), ("memory_over_time.png", _memory),
                       ("vit_speedup.png", _vit_speedup), ("accuracy_vs_tokens.png", _accuracy)):
        figure = draw(plt, results)
        if figure is None:
            continue
        figure.tight_layout()
        figure.savefig(out / name, dpi=110)
        plt.close(figure)
        written.append(name)
    return written


def _results(results: dict, bench: str) -> list[dict]:
    return [s["result"] for s in results["steps"].values() if s["bench"] == bench and "result" in s]


def _latency(plt, results):
    kv, e2e = _results(results, "kv"), _results(results, "e2e")
    if not kv and not e2e:
        return None
    figure, axes = plt.subplots(1, bool(kv) + bool(e2e), figsize=(6 * (bool(kv) + bool(e2e)), 4.5), squeeze=False)
    panels = iter(axes[0])
    left = next(panels) if kv else None
    right = next(panels) if e2e else None
    for r in kv:
        for mode, series in r["series"].items():
            left.plot(series["stream_s"], series["frame_ms"], label=KV_LABELS[mode], linewidth=0.8)
        left.set_title(f"LLM ingest per frame, {r['model']} decoder, {r['tokens_per_frame']} tokens/frame (cpu)")
    if left is not None:
        left.set(xlabel="stream time (s)", ylabel="ingest time per frame (ms)", yscale="log")
        left.legend()
    for r in e2e:
        series = r["series"]
        right.plot(series["stream_s"], series["frame_ms"], marker="o", label=f"frame total ({r['device']})")
        right.plot(series["stream_s"], series["vision_ms"], marker=".", linestyle="--", label=f"ViT ({r['device']})")
    if right is not None:
        right.set(xlabel="stream time (s)", ylabel="time per frame (ms)",
                  title="End to end, " + ", ".join(sorted({r["model"] for r in e2e})) + ", captions on")
        right.legend()
    return figure


def _memory(plt, results):
    kv, e2e = _results(results, "kv"), _results(results, "e2e")
    if not kv and not e2e:
        return None
    count = 2 * bool(kv) + bool(e2e)
    figure, axes = plt.subplots(1, count, figsize=(5.5 * count, 4.5), squeeze=False)
    panels = iter(axes[0])
    rss, held = (next(panels), next(panels)) if kv else (None, None)
    pipeline = next(panels) if e2e else None
    for r in kv:
        for mode, series in r["series"].items():
            rss.plot(series["stream_s"], series["rss_mb"], label=KV_LABELS[mode], linewidth=0.8)
            held.plot(series["stream_s"], [t * r["kv_bytes_per_token"] / 2**20 for t in series["context_tokens"]],
                      label=KV_LABELS[mode], linewidth=0.8)
    if kv:
        rss.set(xlabel="stream time (s)", ylabel="process RSS (MiB)",
                title="kv bench: process memory (modes run in turn, cpu)")
        held.set(xlabel="stream time (s)", ylabel="KV cache held (MiB)", title="kv bench: KV cache held (cpu)")
        rss.legend()
        held.legend()
    for r in e2e:
        pipeline.plot(r["series"]["stream_s"], r["series"]["rss_mb"], marker="o", label=r["device"])
    if pipeline is not None:
        pipeline.set(xlabel="stream time (s)", ylabel="process RSS (MiB)", title="End to end: process memory")
        pipeline.legend()
    return figure


def _vit_speedup(plt, results):
    rows = _results(results, "vision")
    if not rows:
        return None
    figure, axis = plt.subplots(figsize=(8, 4.5))
    labels = [f"{r['video']}\n{r['size']}, {r.get('device', 'cpu')}" for r in rows]
    x = range(len(rows))
    axis.bar([i - 0.2 for i in x], [r["speedup"] for r in rows], width=0.4, label="measured (median time)")
    axis.bar([i + 0.2 for i in x], [1 / r["flop_ratio"] for r in rows], width=0.4, label="counted FLOPs")
    axis.axhline(1.0, color="grey", linewidth=0.8)
    axis.set_xticks(list(x), labels, fontsize=8)
    axis.set(xlabel="video (tower, device)", ylabel="speedup over full recompute (x)",
             title="ViT delta-token cache, per video")
    axis.legend()
    return figure


def _accuracy(plt, results):
    rows = _results(results, "qa")
    if not rows:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), squeeze=False)
    for axis, key in zip(axes[0], ("tokens_per_frame", "context_tokens")):
        points: dict[tuple[float, float], list[str]] = {}  # modes that land on one point share a label
        for r in rows:
            for mode, m in r["modes"].items():
                accuracy = m["short_range"] if m["short_range"] is not None else m["accuracy"]
                if m.get(key) is not None and accuracy is not None:
                    points.setdefault((m[key], accuracy), []).append(mode)
        for (x, y), modes in points.items():
            axis.scatter(x, y)
            axis.annotate("\n".join(modes), (x, y), fontsize=8, xytext=(4, -4), textcoords="offset points",
                          va="top")
    axes[0][0].set(xlabel="visual tokens sent per frame", ylabel="short-range accuracy (fraction right)",
                   title="QA accuracy vs tokens per frame (evaluation model)")
    axes[0][1].set(xlabel="context tokens when a question comes", ylabel="short-range accuracy (fraction right)",
                   title="QA accuracy vs context size", xscale="log")
    for axis in axes[0]:
        axis.set_ylim(0, 1.05)
        axis.margins(x=0.25)  # room for the labels right of the points
    return figure
