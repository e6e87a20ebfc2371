"""The visual token pruner against the unpruned pipeline, on the frames of a video.

Each sampled frame goes through the ViT and projector once (the delta cache off, so the
tokens differ by pruning alone); its tokens are prefilled into two language stages, all of
them into one and the pruner's choice into the other, in alternating order, and both are
timed. Reported: tokens_mean and tokens_p95 (kept per frame), prefill_ratio (median
pruned per-frame time, pruner included, over the unpruned one), and, from questions asked
of both stages every few frames, top1_agreement and kl (KL(unpruned || pruned) of the
first answer token's distribution, in nats).

appearance_recall comes from a synthetic static-camera stream (`streamvlm.synth`) where
objects appear at known frames and places: of the grid cells an object covers (at least
half of a cell) in the frame where it appears, the share the pruner kept.

With random weights (none are reachable offline) the timings and token counts are those
of the real architecture and geometry; agreement and KL say how far pruning moves this
model's outputs, not how a trained model's answers would change.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from streamvlm.bench.measure import median, progress
from streamvlm.bench.options import given
from streamvlm.bench.sources import label, sampled
from streamvlm.config import ModelConfig, PipelineConfig
from streamvlm.llm.stage import LanguageStage
from streamvlm.models import load_model
from streamvlm.models.siglip import patch_embedding_size
from streamvlm.synth import SyntheticScene, cells_covered
from streamvlm.types import TokenBatch
from streamvlm.vision.pruner import PruneSettings, TokenPruner
from streamvlm.vision.stage import VisionStage

QUESTIONS = ("What is happening?", "How many people are there?", "What is on the left?", "Describe the scene.")


def run(args) -> dict:
    model = load_model(ModelConfig(name=args.model, dtype=args.dtype, fallback_to_tiny=False))
    cfg = _config(args)
    settings = cfg.vision.prune
    vision = VisionStage(cfg, model)  # only its ViT + projector run here: all tokens, unpruned
    stages = {"full": LanguageStage(cfg, model), "pruned": LanguageStage(cfg, model)}
    pruner = TokenPruner(settings)
    ms = {"full": [], "pruned": []}
    kept, agree, kls = [], [], []
    frames = sampled(args.video, args.fps, args.frames)
    bar = progress(len(frames), f"prune {args.mode}")
    for i, (stamp, rgb) in enumerate(frames):
        tokens, grid = vision.encode(model.preprocess(rgb))
        start = time.perf_counter()
        keep = pruner.select(tokens[0], stamp).keep
        pruning_ms = (time.perf_counter() - start) * 1e3
        batches = {"full": TokenBatch(stamp, i, tokens[0], torch.arange(tokens.shape[1]), grid),
                   "pruned": TokenBatch(stamp, i, tokens[0, keep], keep, grid)}
        kept.append(keep.numel())
        for name in (("full", "pruned") if i % 2 == 0 else ("pruned", "full")):
            start = time.perf_counter()
            stages[name].ingest(batches[name])
            ms[name].append((time.perf_counter() - start) * 1e3 + (pruning_ms if name == "pruned" else 0.0))
        if args.question_every and (i + 1) % args.question_every == 0:
            question = QUESTIONS[(i // args.question_every) % len(QUESTIONS)]
            full, pruned = (stages[n].ask(question, max_new_tokens=1).first_logits.float() for n in ("full", "pruned"))
            agree.append(int(full.argmax()) == int(pruned.argmax()))
            p, q = full.log_softmax(-1), pruned.log_softmax(-1)
            kls.append(float((p.exp() * (p - q)).sum()))
        bar.update()
    bar.close()
    synthetic = _appearance_recall(model, cfg, settings, args.synth_frames, args.seed)
    return {
        "tokens_mean": round(float(np.mean(kept)), 2),
        "tokens_p95": round(float(np.percentile(kept, 95)), 2),
        "prefill_ratio": round(median(ms["pruned"]) / median(ms["full"]), 4),
        "top1_agreement": round(float(np.mean(agree)), 4) if agree else None,
        "kl": round(float(np.mean(kls)), 5) if kls else None,
        "appearance_recall": synthetic["recall"],
        "frames": len(frames),
        "tokens_per_frame": int(tokens.shape[1]),
        "prefill_ms": {"full": round(median(ms["full"]), 3), "pruned": round(median(ms["pruned"]), 3)},
        "questions": len(agree),
        "synthetic": synthetic,
        "mode": args.mode,
        "settings": {k: v for k, v in vars(settings).items() if k != "mode"},
        "video": label(args.video),
        "model": args.model,
        "fps": args.fps,
        "threads": torch.get_num_threads(),
    }


def _config(args) -> PipelineConfig:
    vision = {"fps": 0.0, "delta.mode": "off", "prune": {**given(args, PruneSettings), "mode": args.mode}}
    return PipelineConfig().replace(model={"name": args.model, "dtype": args.dtype}, vision=vision,
                                    language={"caption_interval_s": 0.0})


def _appearance_recall(model, cfg: PipelineConfig, settings, frames: int, seed: int) -> dict:
    scene = SyntheticScene(seed, frames)
    vision = VisionStage(cfg, model)
    pruner = TokenPruner(settings)
    # The share of the frame's side the patch grid covers (SigLIP at 384 px drops a 6 px edge).
    extent = model.tower.patch_grid[0] * patch_embedding_size(model.tower.embed)[0] / model.image_size
    hits = covered = 0
    kept = []
    for i, frame in enumerate(scene):
        tokens, grid = vision.encode(model.preprocess(frame.rgb))
        keep = set(pruner.select(tokens[0], frame.stamp_ns).keep.tolist())
        kept.append(len(keep))
        for obj in scene.appearing(i):
            cells = cells_covered(scene.mask(obj), grid, extent)
            covered += len(cells)
            hits += sum(int(c) in keep for c in cells)
    return {"recall": round(hits / covered, 4) if covered else None, "frames": frames,
            "appearances": len(scene.objects), "cells": covered, "tokens_mean": round(float(np.mean(kept)), 2)}
