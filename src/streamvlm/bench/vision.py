"""The delta-token ViT cache against full recompute, on the frames of a video.

Each frame goes through the full ViT and through the cache, in alternating order, and
both are timed. Reported: speedup (median full time / median cached time), flop_ratio
(counted FLOPs, cached / full, over all frames), reuse_ratio (mean share of token-layer
work skipped), cosine_mean and cosine_p01 (per token, the cache's output against the
full ViT's, over all frames), and recall: of the patches that changed visibly since the
pixels their cache was computed from (at least 10% of a patch's pixels moved by more than
25/255 in some channel), the share that were recomputed (per layer, for stc).

Roofline: `gflop_per_frame` (counted, full ViT; the cache's mean) and `gflops` (counted
FLOPs over measured time, for each) against `peak_gflops`, the device's peak
(`streamvlm.bench.peak` names its source): how much of the machine each keeps busy.

The towers have random weights (none are reachable offline): timing and FLOPs are those
of the real architecture, but cosine with random weights says how far the cache moves
the features, not how much a trained model's answers would change.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from streamvlm.bench.measure import median, pick_device, progress
from streamvlm.bench.peak import peak
from streamvlm.bench.sources import label, open_frames
from streamvlm.bench.options import given
from streamvlm.vision.delta_cache import DeltaSettings, DeltaViT
from streamvlm.vision.encoder import VisionEncoder

CHANGED_PIXEL = 25 / 255  # a pixel moved visibly
CHANGED_SHARE = 0.10  # ... in at least this share of a patch's pixels
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def run(args) -> dict:
    dtype = DTYPES[args.dtype]
    device = pick_device(args.device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    tower, preprocess = _tower(args.model or args.size, dtype, device)
    settings = _settings(args)
    delta = DeltaViT(tower, settings)
    full = VisionEncoder(tower)
    frames = _frames(args.video, args.frames)
    full_ms, cached_ms, flops, full_flops, reuse, cosines, hits, changed = [], [], 0, 0, [], [], 0.0, 0
    kinds = {"full": 0, "partial": 0, "reused": 0}
    bar = progress(len(frames), f"vision {args.mode}")
    for i, frame in enumerate(frames):
        pixels = preprocess(frame)
        reference = delta.reference_patches
        reference = None if reference is None else reference.clone()
        # Alternate which goes first, so neither always runs on a warmer cache.
        order = (("full", full), ("cached", delta)) if i % 2 == 0 else (("cached", delta), ("full", full))
        outputs = {}
        for name, encoder in order:
            sync()
            start = time.perf_counter()
            outputs[name] = encoder(pixels)
            sync()
            (full_ms if name == "full" else cached_ms).append((time.perf_counter() - start) * 1e3)
        work = delta.last
        kinds[work.kind] += 1
        flops += work.flops
        full_flops += delta.full_flops
        reuse.append(work.reuse_ratio)
        cosines.append(torch.nn.functional.cosine_similarity(
            outputs["cached"][0].float(), outputs["full"][0].float(), dim=-1))
        if reference is not None:
            moved = _visibly_changed(delta, pixels, reference)
            hits += float(work.recomputed[moved].sum())
            changed += int(moved.sum())
        bar.update()
    bar.close()
    cosine = torch.cat(cosines)
    ceiling = peak(device, args.dtype, torch.get_num_threads())
    full_gflop, cached_gflop = full_flops / len(frames) / 1e9, flops / len(frames) / 1e9
    full_rate = full_flops / 1e9 / (sum(full_ms) / 1e3)
    cached_rate = flops / 1e9 / (sum(cached_ms) / 1e3)
    return {
        "speedup": round(median(full_ms) / median(cached_ms), 3),
        "flop_ratio": round(flops / full_flops, 4),
        "reuse_ratio": round(float(np.mean(reuse)), 4),
        "cosine_mean": round(float(cosine.mean()), 5),
        "cosine_p01": round(float(torch.quantile(cosine, 0.01)), 5),
        "recall": round(hits / changed, 4) if changed else None,
        "frames": len(frames),
        "changed_patches": changed,
        "passes": kinds,  # frames by what the cache did: full ViT, partial, or reused outright
        "full_ms": round(median(full_ms), 2),
        "cached_ms": round(median(cached_ms), 2),
        "gflop_per_frame": {"full": round(full_gflop, 3), "cached": round(cached_gflop, 3)},
        "gflops": {"full": round(full_rate, 2), "cached": round(cached_rate, 2)},
        "peak_gflops": ceiling["gflops"],
        "peak_source": ceiling["source"],
        "series": {"full_ms": [round(v, 2) for v in full_ms], "cached_ms": [round(v, 2) for v in cached_ms]},
        "video": label(args.video),
        "device": device,
        "mode": args.mode,
        "settings": {k: v for k, v in vars(settings).items() if k != "mode"},
        "size": None if args.model else args.size,
        "model": args.model,
        "dtype": args.dtype,
        "backend": args.backend,
        "threads": torch.get_num_threads(),
    }


def _settings(args) -> DeltaSettings:
    return DeltaSettings(**given(args, DeltaSettings))  # --mode is among them


def _tower(name: str, dtype: torch.dtype, device: str):
    """A random SigLIP of size `name` (base, so400m), or the tower of the model `name`."""
    if name not in ("base", "so400m"):
        from streamvlm.config import ModelConfig
        from streamvlm.models import load_model

        model = load_model(ModelConfig(name=name, dtype={v: k for k, v in DTYPES.items()}[dtype], device=device,
                                       fallback_to_tiny=False))
        return model.tower, model.preprocess
    from streamvlm.vision.towers import random_siglip, siglip_pixels

    return random_siglip(name, dtype, device=device), lambda frame: siglip_pixels(frame, dtype).to(device)


def _frames(spec, count: int) -> list[np.ndarray]:
    frames = [frame.rgb for frame in open_frames(spec, count)]
    if not frames:
        raise ValueError(f"no frames could be read from {spec}")
    return frames


def _visibly_changed(delta: DeltaViT, pixels: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """[P] bool: patches where enough pixels moved visibly since `reference` [P, 3*p*p]."""
    now = delta.patches(pixels)  # same patch layout and 0..1 scale as the reference
    channels = now.shape[1] // 3
    moved = ((now - reference).abs() > CHANGED_PIXEL).view(-1, 3, channels).any(dim=1)  # [P, p*p]
    return moved.float().mean(dim=1) >= CHANGED_SHARE
