"""The synthetic stream generator: deterministic, with ground truth that matches its pixels."""

from __future__ import annotations

import numpy as np

from streamvlm.synth import SyntheticScene, cells_covered


def test_same_seed_same_stream_other_seed_other_stream():
    a, b, c = SyntheticScene(3, 40), SyntheticScene(3, 40), SyntheticScene(4, 40)
    assert a.objects == b.objects and a.objects != c.objects
    assert np.array_equal(a.frame(17), b.frame(17)) and not np.array_equal(a.frame(17), c.frame(17))
    stamps = [f.stamp_ns for f in a]
    assert len(stamps) == 40 and stamps[:3] == [0, 10**9, 2 * 10**9]


def test_objects_appear_where_and_when_the_ground_truth_says():
    scene = SyntheticScene(0, 60)
    assert len(scene.objects) >= 10
    for obj in scene.objects[:5]:
        before, at = scene.frame(obj.appear - 1).astype(int), scene.frame(obj.appear).astype(int)
        changed = np.abs(at - before).max(axis=2) > 40
        mask = scene.mask(obj)
        left = [scene.mask(o) for o in scene.objects if o.leave == obj.appear]  # gone in the same frame
        elsewhere = ~np.logical_or.reduce([mask, *left])
        assert changed[mask].mean() > 0.9 and changed[elsewhere].mean() < 0.001  # noise alone stays below 40
        others = [o for o in scene.objects if o is not obj and o.visible(obj.appear)]
        assert not any(scene.mask(o)[mask].any() for o in others)  # never drawn over another


def test_cells_covered_maps_the_mask_onto_the_token_grid():
    mask = np.zeros((480, 640), bool)
    mask[:, :320] = True  # the left half
    assert list(cells_covered(mask, (2, 2))) == [0, 2]
    assert len(cells_covered(mask, (14, 14))) == 14 * 7
    corner = np.zeros((480, 640), bool)
    corner[:240, :320] = True
    assert list(cells_covered(corner, (4, 4))) == [0, 1, 4, 5]
    assert list(cells_covered(corner, (2, 2), extent=0.5)) == [0, 1, 2, 3]  # the grid spans that corner only
