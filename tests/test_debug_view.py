"""The debug picture: recomputed patches tinted, sent tokens outlined, and the video `replay`
writes of it."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import torch
from conftest import SAMPLE_BAG

from streamvlm.debug_view import KEPT_RGB, RECOMPUTED_RGB, FrameView, draw


def _view(recomputed, kept, extent=1.0) -> FrameView:
    return FrameView(0, recomputed, (4, 4), torch.tensor(kept), (2, 2), extent)


def test_recomputed_patches_are_tinted_and_sent_tokens_outlined():
    frame = np.full((80, 80, 3), 128, np.uint8)
    recomputed = torch.zeros(16)
    recomputed[0] = 1.0  # patch (0, 0): every layer recomputed it
    recomputed[5] = 0.5  # patch (1, 1): half of them
    recomputed[4] = 1.0  # and patch (1, 0): every layer
    out = draw(frame, _view(recomputed, [3]))  # token (1, 1): patches rows 2-3, cols 2-3
    assert out.shape == frame.shape and out.dtype == np.uint8
    # (the label is written across the top 22 rows, on a darkened band)
    full, half, untouched = out[25, 12].astype(int), out[28, 28].astype(int), out[50, 10].astype(int)
    assert full[0] > half[0] > untouched[0] == 128 and full[2] < half[2] < 128  # towards red, by share
    expected = np.round(128 * 0.5 + np.array(RECOMPUTED_RGB) * 0.5)
    assert np.abs(full - expected).max() <= 1
    # the kept token's cell [40, 80) x [40, 80) has a green outline; the other cells none
    assert tuple(out[40, 60]) == KEPT_RGB and tuple(out[79, 60]) == KEPT_RGB and tuple(out[60, 40]) == KEPT_RGB
    assert tuple(out[60, 60]) == (128, 128, 128) and tuple(out[40, 20]) != KEPT_RGB
    assert out[21].max() < 128  # the band under the label is darkened (its last row: below the text)
    assert np.array_equal(frame, np.full((80, 80, 3), 128, np.uint8))  # the camera's frame is left alone


def test_a_grid_short_of_the_frame_leaves_its_edge_untouched_and_big_frames_are_scaled():
    frame = np.full((100, 100, 3), 90, np.uint8)
    out = draw(frame, _view(torch.ones(16), [], extent=0.9))
    assert tuple(out[95, 50]) == (90, 90, 90) and out[80, 50, 0] > 90
    big = draw(np.zeros((1440, 2560, 3), np.uint8), _view(None, [0, 1, 2, 3]))
    assert max(big.shape[:2]) == 960 and big.shape[1] / big.shape[0] == 2560 / 1440


def test_replay_writes_the_debug_video(tmp_path):
    out = tmp_path / "debug.mp4"
    result = subprocess.run([sys.executable, "-m", "streamvlm.cli", "replay", str(SAMPLE_BAG), "--model", "tiny",
                             "--json", "--max-new-tokens", "2", "--debug-video", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    video = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, image = video.read()
        if not ok:
            break
        frames.append(image)
    assert len(frames) == 20  # a 20 s bag at the default 1 fps: every processed frame
    first = cv2.cvtColor(frames[0], cv2.COLOR_BGR2RGB).astype(int)
    # the first frame is a full ViT pass: everything is tinted towards red
    assert first[..., 0].mean() > first[..., 2].mean()
