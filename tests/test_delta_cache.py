"""The delta-token ViT cache: lossless settings equal the full ViT (tiny and SigLIP-base
sized random towers), decisions are deterministic, and the threshold mode reuses what a
static scene allows and no more."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamvlm.config import ModelConfig
from streamvlm.models import load_model
from streamvlm.vision.delta_cache import DeltaSettings, DeltaViT
from streamvlm.vision.encoder import VisionEncoder
from streamvlm.vision.towers import random_siglip, siglip_pixels

ATOL = 1e-4  # float32; the partial pass sums attention over the same keys in another order


@pytest.fixture(scope="module", params=["tiny", "tiny-smolvlm", "tiny-qwen2vl", "tiny-qwen25vl", "base"])
def tower(request, tiny_model):
    if request.param == "tiny":
        return tiny_model.tower, tiny_model.preprocess
    if request.param == "tiny-smolvlm":
        smolvlm = request.getfixturevalue("tiny_smolvlm")
        return smolvlm.tower, smolvlm.preprocess
    if request.param.startswith("tiny-qwen"):  # 2-D RoPE in every layer; 2.5: windowed layers too
        qwen = load_model(ModelConfig(name=request.param, fallback_to_tiny=False))
        return qwen.tower, qwen.preprocess
    return random_siglip("base"), siglip_pixels


def _scene(frames: int, step: int = 6, seed: int = 0) -> list[np.ndarray]:
    """A static textured background with a white square moving down by `step` px a frame."""
    background = np.random.default_rng(seed).integers(0, 256, (384, 384, 3), dtype=np.uint8)
    out = []
    for t in range(frames):
        frame = background.copy()
        frame[40 + step * t:100 + step * t, 70:130] = 255
        out.append(frame)
    return out


def _run(tower, preprocess, settings, frames):
    delta, full = DeltaViT(tower, settings), VisionEncoder(tower)
    results = []
    for frame in frames:
        pixels = preprocess(frame)
        results.append((delta(pixels), full(pixels), delta.last))
    return results


@pytest.mark.parametrize("settings", [
    DeltaSettings(mode="threshold", threshold=-1.0, drift_bound=1.0, full_above=1.0),  # every token dynamic
    DeltaSettings(mode="stc", update_ratio=1.0, refresh=3),
    DeltaSettings(mode="threshold", threshold=0.0, drift_bound=0.0),
], ids=["all-dynamic", "stc-ratio-1", "threshold-0-drift-0"])
def test_lossless_settings_equal_the_full_vit(tower, settings):
    model_tower, preprocess = tower
    frames = _scene(4)
    results = _run(model_tower, preprocess, settings, frames + [frames[-1]])
    for cached, full, _ in results:
        torch.testing.assert_close(cached, full, atol=ATOL, rtol=0)
    kinds = [work.kind for _, _, work in results]
    if settings.mode == "stc" or settings.threshold < 0:
        assert "partial" in kinds  # the partial path itself was checked, not only full passes
    else:
        assert kinds[-1] == "reused"  # the repeated frame reuses the output outright


def test_decisions_and_outputs_are_deterministic(tower):
    model_tower, preprocess = tower
    frames = _scene(5)
    for settings in (DeltaSettings(), DeltaSettings(mode="stc")):
        first = _run(model_tower, preprocess, settings, frames)
        second = _run(model_tower, preprocess, settings, frames)
        for (a, _, wa), (b, _, wb) in zip(first, second):
            assert torch.equal(a, b) and wa == wb and torch.equal(wa.recomputed, wb.recomputed)


def test_threshold_mode_recomputes_the_moving_object_and_reuses_the_rest(tiny_model):
    tower, preprocess = tiny_model.tower, tiny_model.preprocess
    results = _run(tower, preprocess, DeltaSettings(), _scene(4))
    assert [w.kind for _, _, w in results] == ["full", "partial", "partial", "partial"]
    side = tower.patch_grid[1]
    for _, _, work in results[1:]:
        # A 60x60 px square moving 6 px: the patches of its top and bottom edges change.
        assert 0 < work.tokens <= 3 * side and work.reuse_ratio > 0.9
    for cached, full, _ in results:
        cosine = torch.nn.functional.cosine_similarity(cached[0], full[0], dim=-1)
        assert float(cosine.mean()) > 0.99


def test_static_frame_reuses_and_moving_camera_runs_the_full_vit(tiny_model):
    tower, preprocess = tiny_model.tower, tiny_model.preprocess
    still = _scene(1)[0]
    panned = np.roll(still, 20, axis=1)  # the whole view shifts
    results = _run(tower, preprocess, DeltaSettings(), [still, still, panned])
    assert [w.kind for _, _, w in results] == ["full", "reused", "full"]
    assert results[1][2].flops == 0
    torch.testing.assert_close(results[1][0], results[1][1], atol=ATOL, rtol=0)


def test_drift_bound_forces_a_full_pass(tiny_model):
    tower, preprocess = tiny_model.tower, tiny_model.preprocess
    # Each frame moves the square by its own height: new patches every frame, touched grows.
    results = _run(tower, preprocess, DeltaSettings(drift_bound=0.05), _scene(8, step=60))
    kinds = [w.kind for _, _, w in results]
    assert kinds[0] == "full" and "partial" in kinds and "full" in kinds[2:]


def test_counted_flops_of_a_full_pass(tiny_model):
    tower = tiny_model.tower
    delta = DeltaViT(tower, DeltaSettings(mode="off"))
    delta(tiny_model.preprocess(_scene(1)[0]))
    patches, width = 27 * 27, tower.layers[0].q_proj.in_features
    mlp = tower.layers[0].mlp.fc1.out_features
    per_layer = 2 * patches * (4 * width * width + 2 * width * mlp) + 4 * patches * patches * width
    embed = 2 * patches * 3 * 14 * 14 * width
    assert delta.last.flops == embed + len(tower.layers) * per_layer


def test_a_key_frame_comes_every_n_frames_even_on_a_still_scene(tiny_model):
    tower, preprocess = tiny_model.tower, tiny_model.preprocess
    still = _scene(1)[0]
    results = _run(tower, preprocess, DeltaSettings(keyframe_every=3), [still] * 7)
    assert [w.kind for _, _, w in results] == ["full", "reused", "reused", "full", "reused", "reused", "full"]
    never = _run(tower, preprocess, DeltaSettings(), [still] * 7)
    assert [w.kind for _, _, w in never].count("full") == 1
