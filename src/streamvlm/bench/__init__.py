"""`streamvlm bench ...`: compared modes run side by side in one process; ratios printed.

Each benchmark is a module with `run(args) -> dict`, imported only when it runs (they
pull in torch and transformers); its options are declared here so `streamvlm -h` stays
fast. The result is printed as JSON with --json, else as aligned `name  value` lines.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from streamvlm.bench.options import add_settings
from streamvlm.fields import choices


def _lm_stream(p) -> None:
    p.add_argument("--tokens", type=int, default=20000, help="tokens of text streamed (default 20000)")
    p.add_argument("--budget", type=int, default=1024, help="KV budget of the streamed caches, tokens")
    p.add_argument("--sinks", type=int, default=4, help="attention sinks kept by sinks + window")
    p.add_argument("--chunk", type=int, default=32, help="tokens fed at once")
    p.add_argument("--model", default="smollm2", help="'smollm2' or a causal LM directory / HF id")
    p.add_argument("--text", type=Path, help="text file (default: the system's license texts)")


def _random_frames(p, frames: int, frames_help: str, budget_help: str) -> None:
    """Options of the benches that stream random visual tokens through the decoder."""
    p.add_argument("--frames", type=int, default=frames, help=frames_help)
    p.add_argument("--model", default="tiny", help="vision-language model whose decoder runs (default tiny)")
    p.add_argument("--tokens-per-frame", type=int, default=196)
    p.add_argument("--budget", type=int, default=8192, help=budget_help)
    p.add_argument("--fps", type=float, default=1.0, help="stream rate the frame stamps follow")


def _kv(p) -> None:
    _random_frames(p, 5000, "frames streamed through the budgeted cache", "KV budget, tokens")
    p.add_argument("--question-every", type=int, default=0, metavar="N",
                   help="ask a question every N frames (0: frames only); answers are not timed")
    p.add_argument("--baseline-max-mb", type=float, default=32.0,
                   help="the full-attention baseline stops when its KV cache passes this size")
    p.add_argument("--recompute-frames", type=int, default=200,
                   help="frames of the sliding-window recompute baseline (its cost is flat once the window is full)")
    from streamvlm.llm.memory import MemorySettings

    add_settings(p, MemorySettings, prefix="memory-")


def _decode(p) -> None:
    p.add_argument("--model", default="smollm2", help="'smollm2', 'tiny', or a causal LM directory / HF id")
    p.add_argument("--context", type=int, default=512, help="prompt tokens before decoding")
    p.add_argument("--tokens", type=int, default=64, help="tokens decoded per run")
    p.add_argument("--repeats", type=int, default=5, help="runs of each, interleaved; medians reported")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1... (auto: CUDA where present)")


def _vision(p) -> None:
    p.add_argument("--video", required=True, help="a video file OpenCV reads, a bag, or synth:SEED")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--size", choices=("tiny", "base", "so400m"), default="base", help="SigLIP-sized tower")
    p.add_argument("--model", help="a vision-language model's own tower instead of --size ('tiny-smolvlm', an "
                                   "HF id or directory...)")
    from streamvlm.vision.delta_cache import DeltaSettings

    modes = tuple(mode for mode in choices(DeltaSettings, "mode") if mode != "off")  # off is the baseline
    p.add_argument("--mode", choices=modes, default=DeltaSettings.mode)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--backend", choices=("torch",), default="torch")
    p.add_argument("--device", default="auto", help="auto (CUDA where present), cpu, cuda, cuda:1...")
    add_settings(p, DeltaSettings, skip=("mode",))


def _prune(p) -> None:
    p.add_argument("--video", required=True, help="a video file OpenCV reads, a bag, or synth:SEED")
    p.add_argument("--frames", type=int, default=60, help="sampled frames streamed (default 60)")
    p.add_argument("--fps", type=float, default=1.0, help="rate frames are sampled at (0: every frame)")
    from streamvlm.vision.pruner import PruneSettings

    modes = tuple(mode for mode in choices(PruneSettings, "mode") if mode != "off")  # off is the baseline
    p.add_argument("--mode", choices=modes, default=PruneSettings.mode)
    p.add_argument("--model", default="tiny", help="vision-language model (default tiny: random, real geometry)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--question-every", type=int, default=5, metavar="N",
                   help="ask both pipelines a question every N frames, for top1_agreement and kl")
    p.add_argument("--synth-frames", type=int, default=120, help="frames of the synthetic appearance stream")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic appearance stream")
    add_settings(p, PruneSettings, skip=("mode",))


def _answer(p) -> None:
    _random_frames(p, 256, "frames streamed before the questions (default 256)", "KV budget of the memory mode, tokens")
    p.add_argument("--questions", type=int, default=3, help="questions asked of each mode; medians reported")
    p.add_argument("--answer-tokens", type=int, default=16, help="max_new_tokens of each answer")
    from streamvlm.llm.memory import MemorySettings

    add_settings(p, MemorySettings, prefix="memory-")
    p.add_argument("--ceiling-mb", type=float, default=32.0, help="memory ceiling of the capacity test, MiB")
    p.add_argument("--capacity-limit", type=int, default=50000, help="stop pushing frames after this many")


def _backends(p) -> None:
    p.add_argument("--video", type=Path, required=True, help="any video file OpenCV reads")
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--size", choices=("tiny", "base", "so400m"), default="base", help="SigLIP-sized tower")
    p.add_argument("--providers", nargs="+", default=["CPUExecutionProvider"],
                   help="onnxruntime execution providers, in order (default CPU)")


def _alerts(p) -> None:
    p.add_argument("--streams", type=int, default=4, help="synthetic streams (odd seeds pan the camera)")
    p.add_argument("--minutes", type=float, default=2.0, help="length of each stream")
    p.add_argument("--fps", type=float, default=1.0, help="frame rate of the streams")
    p.add_argument("--seed", type=int, default=0, help="first stream's seed")
    p.add_argument("--model", default="eval", help="vision-language model (default: the evaluation model)")
    p.add_argument("--config", type=Path, default=Path("config/eval.yaml"), help="settings the stream runs with")
    p.add_argument("--rule", action="append", metavar="RULE",
                   help="'a COLOUR object is visible', 'a SHAPE is visible' or 'a COLOUR SHAPE is visible' "
                        "(repeatable; default: one of each)")
    p.add_argument("--threshold", type=float, nargs="+", metavar="P",
                   help="language.alerts.threshold values to score, all from one run (default: the config's, "
                        "0.3, 0.5, 0.7, 0.9)")
    p.add_argument("--within", type=float, default=3.0, metavar="SECONDS",
                   help="an onset counts as found when its rule fires this soon after it")


def _qa(p) -> None:
    # Defaults: 8 streams (still and panning cameras) x 38 short-range questions = 304 per
    # mode, and each stream's 4 needles (first minute) asked at 11 and 15 minutes: 64 more
    # for the bounded modes. The full-attention modes stop at 2 minutes: the evaluation
    # model was trained on full contexts of up to 128 frames (its LM reads 8192 tokens,
    # and training longer ones on a CPU costs minutes a step).
    p.add_argument("--streams", type=int, default=8, help="synthetic streams, each answered by every mode")
    p.add_argument("--minutes", type=float, default=15.0, help="length of each stream (needles need more than "
                                                                "--needle-minutes)")
    p.add_argument("--short-minutes", type=float, default=2.0,
                   help="short-range questions come in these first minutes; the full-attention modes stop there")
    p.add_argument("--needle-minutes", type=float, default=11.0,
                   help="needle questions (about the first minute) from this minute on, every 5 minutes and at the end")
    p.add_argument("--every", type=int, default=3, metavar="N", help="a short-range question every N frames")
    p.add_argument("--fps", type=float, default=1.0, help="frame rate of the streams")
    p.add_argument("--seed", type=int, default=0, help="first stream's seed (odd seeds pan the camera)")
    p.add_argument("--model", default="eval", help="vision-language model (default: the evaluation model)")
    p.add_argument("--config", type=Path, default=Path("config/eval.yaml"), help="settings every mode starts from")
    p.add_argument("--modes", nargs="+", metavar="MODE", help="run only these modes")
    p.add_argument("--sweep", action="append", metavar="[MODE:]NAME=V1,V2[&NAME=V]",
                   help="also run MODE (default --sweep-base) once per value of this setting (repeatable), e.g. "
                        "prune_adaptive:vision.prune.novelty=0.01,0.05; settings joined by & change together; with --sweep, "
                        "--modes defaults to none")
    p.add_argument("--sweep-base", default="reference", metavar="MODE",
                   help="the mode each swept value changes (e.g. delta_threshold, memory_retrieval)")
    p.add_argument("--examples", type=int, default=3, help="answers shown per mode in the JSON")
    p.add_argument("--out", type=Path, metavar="DIR", help="also write DIR/qa.json and DIR/qa.md, with the "
                                                            "date, machine and command")
    p.add_argument("--readme", type=Path, metavar="README.md", help="with --out: rewrite its Accuracy section")


def _e2e(p) -> None:
    from streamvlm.bench.sources import sample_bag

    p.add_argument("--source", default=sample_bag(),
                   help="video file, bag, or synth:SEED (even seeds: still camera, odd: panning); "
                        "default: the sample bag")
    p.add_argument("--frames", type=int, default=40, help="frames measured, after the warm-up")
    p.add_argument("--warm-up", type=int, default=2, help="frames run first and not measured")
    p.add_argument("--fps", type=float, default=1.0, help="camera rate the source is sampled at")
    p.add_argument("--model", default="edge",
                   help="vision-language model (default edge: the default checkpoint's sizes, random weights)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--device", default="auto", help="auto (CUDA where present), cpu, cuda, cuda:1...")
    p.add_argument("--budget", type=int, default=8192, help="KV budget, tokens")
    p.add_argument("--caption-every", type=float, default=5.0, help="a caption every this many stream seconds")
    p.add_argument("--caption-tokens", type=int, default=24, help="tokens per caption (at most)")


def _soak(p) -> None:
    p.add_argument("--frames", type=int, default=20000, help="frames pushed (default 20000: 66 min at 5 fps)")
    p.add_argument("--fps", type=float, default=5.0, help="camera rate the frame stamps follow")
    p.add_argument("--source", default="synth:1", help="video file, bag, or synth:SEED (default: a panning scene)")
    p.add_argument("--distinct", type=int, default=300, help="frames read from the source, then cycled")
    p.add_argument("--model", default="tiny", help="vision-language model (default tiny)")
    p.add_argument("--budget", type=int, default=2048, help="KV budget, tokens")
    p.add_argument("--memory-mb", type=float, default=2.0, help="long-term memory cap, MiB (reached within the warm-up)")
    p.add_argument("--caption-every", type=float, default=30.0, help="a caption every this many stream seconds")
    p.add_argument("--question-every", type=int, default=500, metavar="N", help="a burst of questions every N frames")
    p.add_argument("--burst", type=int, default=20, help="questions per burst (plus one empty one)")
    p.add_argument("--queue", type=int, default=16, help="questions waiting beyond this are refused as busy")
    p.add_argument("--answer-tokens", type=int, default=6, help="max_new_tokens of each answer")
    p.add_argument("--answer-timeout", type=float, default=120.0, help="seconds after the run before an answer is lost")
    p.add_argument("--warm-up", type=float, default=0.1, help="share of the frames before memory is compared")


# name -> (module, arguments, help)
BENCHES = {
    "lm-stream": ("streamvlm.bench.lm_stream", _lm_stream,
                  "streaming perplexity: full attention vs window vs sinks + window"),
    "kv": ("streamvlm.bench.kv", _kv, "per-frame ingest latency and memory over a long stream, budgeted vs full"),
    "decode": ("streamvlm.bench.decode", _decode, "decode ms per token: this engine vs transformers generate"),
    "vision": ("streamvlm.bench.vision", _vision, "ViT with the delta-token cache vs full recompute, per frame"),
    "answer": ("streamvlm.bench.answer", _answer,
               "answer latency and frame capacity: re-prefill vs full cache vs budgeted cache + memory"),
    "backends": ("streamvlm.bench.backends", _backends,
                 "vision backends side by side: full-frame graph and delta cache, torch vs onnxruntime"),
    "prune": ("streamvlm.bench.prune", _prune, "visual token pruner vs unpruned: tokens, LLM prefill, agreement"),
    "qa": ("streamvlm.bench.qa", _qa, "streaming video QA accuracy per question type, every pipeline mode"),
    "alerts": ("streamvlm.bench.alerts", _alerts, "alert rules on synthetic streams: precision and recall of checks "
               "and of alerts"),
    "e2e": ("streamvlm.bench.e2e", _e2e, "sustained frames per second through both stages, captions on"),
    "soak": ("streamvlm.bench.soak", _soak,
             "a long stream through both stages' workers with bursts of questions: memory growth, nothing lost"),
}


def add_parser(commands) -> None:
    bench = commands.add_parser("bench", help="benchmarks (compared modes in one run, ratios printed)")
    benches = bench.add_subparsers(required=True, metavar="BENCH")
    for name, (module, arguments, text) in BENCHES.items():
        sub = benches.add_parser(name, help=text, description=text)
        sub.add_argument("--json", action="store_true", help="print one JSON object")
        arguments(sub)
        sub.set_defaults(run=_runner(module))
    text = "every bench above with recorded settings: DIR/report.md, DIR/results.json and PNG plots"
    every = benches.add_parser("all", help=text, description=text)
    every.add_argument("--out", type=Path, required=True, metavar="DIR")
    every.add_argument("--quick", action="store_true", help="small settings: under 15 minutes on 2 CPU cores")
    every.add_argument("--device", default="auto", help="auto: the CPU, and the GPU where torch sees one; cpu; cuda "
                                                        "(or cuda:N): the CPU and that GPU, an error without one")
    every.add_argument("--only", nargs="+", metavar="STEP", help="run only the steps whose names start so")
    every.add_argument("--readme", type=Path, metavar="README.md", help="also rewrite its Performance section")
    every.set_defaults(run=lambda args: importlib.import_module("streamvlm.bench.suite").run(args))
    text = "rebuild DIR/report.md and the plots (and a README's Performance section) from DIR/results.json"
    report = benches.add_parser("report", help=text, description=text)
    report.add_argument("dir", type=Path, metavar="DIR")
    report.add_argument("--readme", type=Path, metavar="README.md")
    report.set_defaults(run=lambda args: importlib.import_module("streamvlm.bench.report").run(args))


def _runner(module: str):
    def run(args: argparse.Namespace) -> int:
        bench = importlib.import_module(module)
        result = bench.run(args)
        table = bench.markdown(result) if hasattr(bench, "markdown") else None
        if args.json:
            print(json.dumps(result), flush=True)
            if table:
                print(table, file=sys.stderr, flush=True)
        elif table:
            print(table, flush=True)
        else:
            width = max(len(k) for k in result)
            for key, value in result.items():
                print(f"{key:<{width}}  {value}", flush=True)
        return 0

    return run
