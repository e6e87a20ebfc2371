"""Sustained frames per second through VisionStage + LanguageStage, captions on.

Frames of `--source`, sampled at the camera rate `--fps`, are pushed through both stages as
fast as they go: the ViT with its delta cache and the pruner, the prefill into the
fixed-budget KV cache, and a caption of up to `--caption-tokens` tokens every
`--caption-every` seconds of stream time. Reported: sustained_fps (measured frames over
their wall time, captions included), realtime_factor (sustained_fps / --fps: at 1 or more
the pipeline keeps up with that camera), the per-stage medians, and per-frame series of
latency and process memory for the plots. The first `--warm-up` frames (first passes,
kernel choice) are not measured.

The default model is `edge`: the default checkpoint's architecture and sizes with random
weights, so the cost is the real one where its weights are absent; the captions are noise.
`--device auto` picks CUDA where torch sees a GPU, so the same command measures both.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from streamvlm.bench.measure import median, pick_device, progress, rss_bytes
from streamvlm.bench.sources import label, sampled
from streamvlm.config import PipelineConfig
from streamvlm.llm.stage import LanguageStage
from streamvlm.models import load_model
from streamvlm.vision.stage import VisionStage


def run(args) -> dict:
    device = pick_device(args.device)
    cfg = PipelineConfig().replace(
        model={"name": args.model, "dtype": args.dtype, "device": device, "fallback_to_tiny": False},
        vision={"fps": 0.0},  # frames are sampled here, so every pushed frame is processed
        language={"cache.budget_tokens": args.budget, "caption_interval_s": args.caption_every,
                  "caption_max_new_tokens": args.caption_tokens},
    )
    model = load_model(cfg.model)
    vision, language = VisionStage(cfg, model), LanguageStage(cfg, model)
    frames = sampled(args.source, args.fps, args.warm_up + args.frames)
    if len(frames) <= args.warm_up:
        raise ValueError(f"{args.source} gave {len(frames)} frames at {args.fps} fps; need more than --warm-up")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    series = {"stream_s": [], "frame_ms": [], "vision_ms": [], "language_ms": [], "caption_ms": [], "rss_mb": [],
              "tokens": []}
    captions = 0
    bar = progress(len(frames), "e2e")
    for i, (stamp, rgb) in enumerate(frames):
        sync()
        start = time.perf_counter()
        batch = vision.encode_frame(rgb, stamp)
        sync()
        seen = time.perf_counter()
        language.ingest(batch)
        sync()
        ingested = time.perf_counter()
        caption = language.maybe_caption()
        sync()
        end = time.perf_counter()
        bar.update()
        if i < args.warm_up:
            continue
        captions += caption is not None
        series["stream_s"].append(round((stamp - frames[0][0]) / 1e9, 3))
        series["frame_ms"].append(round((end - start) * 1e3, 2))
        series["vision_ms"].append(round((seen - start) * 1e3, 2))
        series["language_ms"].append(round((ingested - seen) * 1e3, 2))
        series["caption_ms"].append(round((end - ingested) * 1e3, 2) if caption is not None else 0.0)
        series["rss_mb"].append(round(rss_bytes() / 2**20, 1))
        series["tokens"].append(int(batch.embeddings.shape[0]))
    bar.close()
    measured = len(series["frame_ms"])
    wall_s = sum(series["frame_ms"]) / 1e3
    fps = measured / wall_s
    captioned = [ms for ms in series["caption_ms"] if ms > 0]
    return {
        "sustained_fps": round(fps, 4),
        "realtime_factor": round(fps / args.fps, 4),
        "frame_ms": round(median(series["frame_ms"]), 2),
        "vision_ms": round(median(series["vision_ms"]), 2),
        "language_ms": round(median(series["language_ms"]), 2),
        "caption_ms": round(median(captioned), 2) if captioned else None,
        "captions": captions,
        "frames": measured,
        "tokens_mean": round(float(np.mean(series["tokens"])), 2),
        "reuse_ratio": round(float(vision.encoder.last.reuse_ratio), 4),
        "context_tokens_end": language.context_tokens,
        "rss_mb_end": series["rss_mb"][-1],
        "series": series,
        "source": label(args.source),
        "model": args.model,
        "device": device,
        "dtype": args.dtype,
        "fps": args.fps,
        "budget": args.budget,
        "caption_every_s": args.caption_every,
        "caption_tokens": args.caption_tokens,
        "threads": torch.get_num_threads(),
    }
