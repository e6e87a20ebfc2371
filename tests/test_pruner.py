"""The visual token pruner: STC's scoring, the adaptive budget and refresh, and the stage's use of them.

Tokens here are constructed (a shared background direction plus noise, and chosen cells
that change), so what each mode must keep is known without any trained model.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from streamvlm.config import PipelineConfig
from streamvlm.vision.pruner import PruneSettings, TokenPruner, gaussian_similarity, low_variance_channels
from streamvlm.vision.stage import VisionStage

N, D = 196, 64
SECOND = 10**9


def _scene(seed: int = 0) -> torch.Tensor:
    """A static frame's tokens: one background direction, each cell a little different."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(D, generator=g) + 0.3 * torch.randn(N, D, generator=g)


def _noisy(tokens: torch.Tensor, seed: int, scale: float = 0.005) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return tokens + scale * torch.randn(tokens.shape, generator=g)


def test_stc_keeps_the_fixed_count_in_original_order_and_the_outliers_first():
    tokens = _scene()
    outliers = [5, 17, 90, 150, 195]
    g = torch.Generator().manual_seed(1)
    tokens[outliers] = 3 * torch.randn(len(outliers), D, generator=g)  # far from both anchors
    pruner = TokenPruner(PruneSettings(mode="stc", keep_tokens=5))
    first = pruner.select(tokens, 0).keep
    assert first.tolist() == outliers

    pruner = TokenPruner(PruneSettings(mode="stc", keep_tokens=60))
    keep = pruner.select(tokens, 0).keep
    assert keep.numel() == 60 and bool((keep[1:] > keep[:-1]).all()) and set(outliers) <= set(keep.tolist())


def test_stc_scores_as_published_on_the_low_variance_channels():
    """Redundancy = kernel to the running mean of all frames + kernel to the frame mean;
    the kept tokens are the least redundant (computed here independently, frame by frame)."""
    pruner = TokenPruner(PruneSettings(mode="stc", keep_tokens=30))
    frames = [_scene(s) for s in range(4)]
    for i, x in enumerate(frames):
        keep = pruner.select(x, i * SECOND).keep
        channels = torch.argsort(x.var(dim=0, unbiased=False))[: D // 2]
        f = F.normalize(x[:, channels], dim=-1)
        memory = F.normalize(torch.stack([y.mean(0) for y in frames[: i + 1]]).mean(0)[channels], dim=0)
        widths = [0.125, 0.25, 0.5, 1.0, 2.0]
        score = sum(torch.exp(-((f - memory) ** 2).sum(-1) / (2 * a)) for a in widths)
        score = score + sum(torch.exp(-((f - f.mean(0)) ** 2).sum(-1) / (2 * a)) for a in widths)
        assert keep.tolist() == sorted(torch.argsort(score)[:30].tolist())


def test_helpers():
    x = torch.zeros(10, 4)
    x[:, 0] = torch.arange(10.0)  # the one channel that varies
    x[:, 3] = 2 * torch.arange(10.0)
    assert sorted(low_variance_channels(x).tolist()) == [1, 2]
    f = torch.zeros(3, 2)
    assert torch.allclose(gaussian_similarity(f, torch.zeros(2)), torch.full((3,), 5.0))


@pytest.mark.parametrize("mode", ["stc", "adaptive"])
def test_keep_all_settings_keep_every_token(mode):
    settings = PruneSettings(mode=mode, keep_tokens=N, min_tokens=N)
    pruner = TokenPruner(settings)
    for i in range(3):
        assert pruner.select(_noisy(_scene(), i), i * SECOND).keep.tolist() == list(range(N))


def test_adaptive_sends_what_changed_and_almost_nothing_otherwise():
    settings = PruneSettings(mode="adaptive", min_tokens=2, keep_tokens=98, novelty=0.02, refresh_s=0)
    pruner = TokenPruner(settings)
    scene = _scene()
    first = pruner.select(scene, 0)
    assert first.keep.numel() == 98 and first.novelty == 1.0  # a first frame: the ceiling, most distinct cells
    counts = [pruner.select(_noisy(scene, i), i * SECOND).keep.numel() for i in range(1, 6)]
    assert counts == [98, 2, 2, 2, 2]  # the rest of the view, then noise only: the floor

    appeared = [40, 41, 54, 55, 120]  # an object covers these cells
    frame = _noisy(scene, 10)
    frame[appeared] = _scene(99)[appeared] * -1.0
    selection = pruner.select(frame, 10 * SECOND)
    assert set(appeared) <= set(selection.keep.tolist())
    assert selection.keep.numel() == len(appeared)
    assert selection.novelty == pytest.approx(len(appeared) / N)
    # It stays: the LLM has it now, so the next frame sends almost nothing again.
    assert pruner.select(_noisy(frame, 11), 11 * SECOND).keep.numel() == 2


def test_adaptive_ceiling_takes_the_largest_changes():
    pruner = TokenPruner(PruneSettings(mode="adaptive", min_tokens=1, keep_tokens=10, refresh_s=0))
    scene = _scene()
    for i in range(20):  # the whole view reaches the LLM, 10 cells a frame
        assert pruner.select(scene, i * SECOND).keep.numel() == (10 if i < 19 else 6)
    frame = scene.clone()
    g = torch.Generator().manual_seed(3)
    moved = torch.randperm(N, generator=g)[:40]
    strength = torch.linspace(0.2, 3.0, 40)
    frame[moved] += strength[:, None] * torch.randn(40, D, generator=g)
    keep = pruner.select(frame, 20 * SECOND).keep
    channels = low_variance_channels(frame)  # the pruner measures change on these
    distance = 1 - F.cosine_similarity(frame[:, channels], scene[:, channels], dim=-1)
    assert keep.tolist() == sorted(torch.topk(distance, 10).indices.tolist())


def test_adaptive_refresh_keeps_every_cell_recent_on_a_static_stream():
    refresh_s = 6.0
    pruner = TokenPruner(PruneSettings(mode="adaptive", min_tokens=1, keep_tokens=98, refresh_s=refresh_s))
    scene = _scene()
    sent = np.full(N, -math.inf)
    counts, ages = [], []
    for i in range(60):
        keep = pruner.select(_noisy(scene, i), i * SECOND).keep.numpy()
        sent[keep] = i
        counts.append(len(keep))
        ages.append(i - sent.min())  # the LLM's oldest copy of any cell
    assert counts[:2] == [98, 98]  # the first two frames send the whole view
    assert max(ages[2:]) <= 2 * refresh_s  # while the first view's copies come due at once
    assert max(ages[20:]) <= refresh_s + 1  # then spread out
    assert max(counts[10:]) <= math.ceil(N / refresh_s) and np.mean(counts[10:]) <= N / refresh_s + 1


def test_adaptive_starts_over_when_time_goes_back_or_the_grid_changes():
    pruner = TokenPruner(PruneSettings(mode="adaptive", keep_tokens=98, refresh_s=0))
    scene = _scene()
    counts = [pruner.select(scene, (10 + i) * SECOND).keep.numel() for i in range(3)]
    assert counts == [98, 98, 4]
    assert pruner.select(scene, 5 * SECOND).keep.numel() == 98  # looped bag: a first frame again
    assert pruner.select(scene[:100], 6 * SECOND).keep.numel() == 98


def test_settings_are_checked():
    with pytest.raises(ValueError, match="min_tokens"):
        PruneSettings(min_tokens=10, keep_tokens=5)
    with pytest.raises(ValueError, match="mode"):
        PruneSettings(mode="magic")


def test_vision_stage_sends_kept_tokens_with_their_grid_positions(tiny_model, frames):
    base = {"fps": 0.0, "delta.mode": "off"}
    stc = {"prune.mode": "stc", "prune.keep_tokens": 60}
    cfg = PipelineConfig().replace(model={"name": "tiny"}, vision={**base, **stc})
    full_cfg = PipelineConfig().replace(model={"name": "tiny"}, vision={**base, "prune.mode": "off"})
    pruned, full = VisionStage(cfg, tiny_model), VisionStage(full_cfg, tiny_model)
    batch = pruned.process(frames[0], SECOND)
    reference = full.process(frames[0], SECOND)
    assert reference.num_tokens == 196 and reference.positions.tolist() == list(range(196))
    assert batch.num_tokens == 60 and batch.grid == (14, 14)
    assert torch.equal(batch.embeddings, reference.embeddings[batch.positions])

    with pytest.raises(ValueError, match="min_tokens"):
        pruned.reconfigure(cfg.replace(vision={"prune.mode": "adaptive", "prune.min_tokens": 99}))
    assert pruned.pruner.settings.mode == "stc"  # a refused change changes nothing
    pruned.reconfigure(cfg.replace(vision={"prune.keep_tokens": 20}))
    assert pruned.process(frames[1], 2 * SECOND).num_tokens == 20
