"""Where a benchmark's frames come from: a video file, a ROS 2 bag, or a synthetic scene.

`synth:SEED` is `evaluation_scene(SEED)`: even seeds have a still camera, odd seeds pan,
so one spec names a static or a moving view without any file.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # `streamvlm -h` reads the default source from here and stays light
    import numpy as np

    from streamvlm.types import Frame

SYNTH = "synth:"
SAMPLE = Path("tests/data/vtest_20s")  # the committed sample: 20 s of people walking in a hall


def sample_bag() -> str:
    """The sample bag, from the project root or next to this source tree (an editable
    install); where neither has it, a synthetic still-camera scene."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (root / SAMPLE).is_dir():
            return str(root / SAMPLE) if root != Path.cwd() else str(SAMPLE)
    return f"{SYNTH}2"


def open_frames(spec: str | Path, count: int, synth_fps: float = 1.0) -> Iterable[Frame]:
    """Up to `count` frames of `spec`, lazily, stamped as recorded (synthetic and video: from 0);
    a synthetic scene is rendered at `synth_fps`."""
    text = str(spec)
    if is_synthetic(text):
        from streamvlm.synth import evaluation_scene

        return iter(evaluation_scene(int(text[len(SYNTH):]), count, fps=synth_fps))
    path = Path(text)
    if path.is_dir() or path.suffix in (".mcap", ".db3"):
        from streamvlm.bag import BagFrames

        return islice(BagFrames(path), count)
    from streamvlm.video import VideoFrames

    return islice(VideoFrames(path), count)


def is_synthetic(spec: str | Path) -> bool:
    return str(spec).startswith(SYNTH)


def label(spec: str | Path) -> str:
    """A short name for tables and plots."""
    text = str(spec)
    if is_synthetic(text):
        seed = int(text[len(SYNTH):])
        return f"synthetic {'panning' if seed % 2 else 'still'} (seed {seed})"
    return Path(text).stem or text


def sampled(spec: str | Path, fps: float, count: int) -> list[tuple[int, np.ndarray]]:
    """(stamp, rgb) of `spec`'s frames at `fps` of stream time (every frame at 0), up to `count`."""
    frames, next_ns = [], None
    # A synthetic scene is rendered at the camera rate; a recording is read until enough are sampled.
    bound = count if is_synthetic(spec) else 10**9
    for frame in open_frames(spec, bound, synth_fps=fps or 1.0):
        if fps and next_ns is not None and frame.stamp_ns < next_ns:
            continue
        frames.append((frame.stamp_ns, frame.rgb))
        next_ns = frame.stamp_ns + round(1e9 / fps) if fps else None
        if len(frames) == count:
            break
    if not frames:
        raise ValueError(f"no frames could be read from {spec}")
    return frames
