"""`streamvlm bench all`: every benchmark with recorded settings, then a report, JSON and plots.

Each benchmark runs in a process of its own (`python -m streamvlm bench NAME --json`), so
its memory figures are its own and one failure does not stop the rest; its settings are
the arguments written in `results.json`. `--quick` is sized to finish in under 15 minutes
on 2 CPU cores. Where torch sees a CUDA GPU, the benches that take a device (vision, e2e)
run on the CPU and on the GPU, and every figure carries the device it came from.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from streamvlm.bench.measure import FORCE_PROGRESS, pick_device
from streamvlm.bench.sources import sample_bag
from streamvlm.machine import machine

SAMPLE_BAG = sample_bag()
VIDEOS = (SAMPLE_BAG, "synth:0", "synth:1")  # people in a hall; synthetic still camera; synthetic pan


@dataclass(frozen=True)
class Step:
    name: str  # unique key in results.json
    bench: str  # streamvlm bench NAME
    argv: tuple[str, ...]


def plan(quick: bool, devices: list[str], with_qa: bool) -> list[Step]:
    """The benches and their settings: small enough for 2 cores with --quick, longer without."""
    steps = []
    frames = "24" if quick else "100"
    for video in VIDEOS:
        for device in devices:
            steps.append(Step(f"vision {video} {device}", "vision",
                              ("--video", video, "--frames", frames, "--size", "base", "--device", device)))
    if not quick:
        for device in devices:  # the edge tower (so400m): the roofline of what a Jetson runs
            steps.append(Step(f"vision-so400m {SAMPLE_BAG} {device}", "vision",
                              ("--video", SAMPLE_BAG, "--frames", "40", "--size", "so400m", "--device", device)))
    steps += [
        Step("prune", "prune", ("--video", SAMPLE_BAG, "--frames", "20" if quick else "60",
                                "--synth-frames", "60" if quick else "120")),
        Step("kv", "kv", ("--frames", "300", "--recompute-frames", "60") if quick else ("--frames", "3000",)),
        Step("answer", "answer", ("--frames", "128", "--capacity-limit", "5000") if quick else ()),
    ]
    for device in devices:  # on a GPU in bf16, the dtype an edge GPU runs
        half = ("--dtype", "bfloat16") if device != "cpu" else ()
        steps.append(Step(f"decode {device}", "decode", ("--device", device, *half,
                                                         *(("--context", "256", "--tokens", "24", "--repeats", "3")
                                                           if quick else ()))))
    if with_qa:
        steps.append(Step("qa", "qa", ("--streams", "1", "--minutes", "1", "--short-minutes", "1", "--every", "4")
                          if quick else ("--streams", "1", "--minutes", "12", "--short-minutes", "2", "--every", "3")))
    for device in devices:
        half = ("--dtype", "bfloat16") if device != "cpu" else ()
        steps.append(Step(f"e2e {device}", "e2e", ("--frames", "12", "--device", device, *half) if quick
                          else ("--fps", "2", "--frames", "36", "--device", device, *half)))
    return steps


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    devices = _devices(args.device)
    steps = plan(args.quick, devices, _qa_available())
    if args.only:
        steps = [s for s in steps if any(s.name.startswith(prefix) for prefix in args.only)]
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": "streamvlm bench all" + (" --quick" if args.quick else "")
                          + (f" --device {args.device}" if args.device != "auto" else "") + f" --out {args.out}",
               "machine": machine(), "quick": args.quick, "steps": {}}
    started = time.perf_counter()
    for i, step in enumerate(steps, 1):
        _say(f"[{i}/{len(steps)}] {step.name}: streamvlm bench {step.bench} {' '.join(step.argv)}")
        results["steps"][step.name] = record = run_step(step)
        state = "done" if "result" in record else f"FAILED ({record['error'].splitlines()[-1][:200]})"
        _say(f"[{i}/{len(steps)}] {step.name}: {state} in {record['seconds']:.0f} s "
             f"({time.perf_counter() - started:.0f} s so far)")
        (out / "results.json").write_text(json.dumps(results, indent=1))  # partial results survive a stop
    results["seconds"] = round(time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    from streamvlm.bench.report import write_report

    write_report(results, out, readme=args.readme)
    _say(f"wrote {out / 'report.md'}, {out / 'results.json'} and the plots in {results['seconds']:.0f} s")
    return 0 if all("result" in r for r in results["steps"].values()) else 1


def _devices(wanted: str) -> list[str]:
    """The CPU always (the baseline every figure is compared with), and the GPU where asked
    for (`cuda`, `cuda:N`) or present (`auto`)."""
    if wanted == "cpu":
        return ["cpu"]
    if wanted == "auto":
        return ["cpu"] + (["cuda"] if pick_device("auto") == "cuda" else [])
    import torch

    if not wanted.startswith("cuda") or not torch.cuda.is_available():
        raise SystemExit(f"bench all --device {wanted}: torch sees no CUDA device here "
                         f"(torch {torch.__version__}); use --device cpu or auto")
    return ["cpu", wanted]


def run_step(step: Step) -> dict:
    command = [sys.executable, "-m", "streamvlm", "bench", step.bench, *step.argv, "--json"]
    env = dict(os.environ)
    if sys.stderr.isatty():
        env[FORCE_PROGRESS] = "1"  # the child's stderr is a pipe, but what it writes reaches a terminal
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    tail = bytearray()
    relay = threading.Thread(target=_relay, args=(child.stderr, tail), daemon=True)
    relay.start()
    stdout = child.stdout.read().decode(errors="replace")
    returncode = child.wait()
    relay.join()
    record = {"bench": step.bench, "argv": list(step.argv), "seconds": round(time.perf_counter() - start, 1)}
    lines = stdout.strip().splitlines()
    if returncode == 0 and lines:
        try:
            record["result"] = json.loads(lines[-1])
            return record
        except json.JSONDecodeError:
            pass
    said = tail.decode(errors="replace").replace("\r", "\n").strip().splitlines()
    record["error"] = f"exit {returncode}: " + ("\n".join(said[-5:]) or stdout.strip()[-2000:] or "no output")
    return record


def _relay(stream, tail: bytearray, keep: int = 8192) -> None:
    """Copy a child's stderr to ours as it comes (progress bars, warnings), keeping its tail."""
    while chunk := os.read(stream.fileno(), 4096):
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
        tail.extend(chunk)
        del tail[:-keep]


def _qa_available() -> bool:
    """The accuracy benchmark needs the evaluation model (its trained parts and SmolLM2)."""
    from streamvlm.models import ModelUnavailable, resolve

    try:
        resolve("eval")
        return True
    except ModelUnavailable:
        return False


def _say(text: str) -> None:
    print(f"bench all: {text}", file=sys.stderr, flush=True)
