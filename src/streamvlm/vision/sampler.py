"""Which camera frames to process, by their stamps, at a target rate."""

from __future__ import annotations


class FrameSampler:
    """Keeps one camera frame per period of 1/fps seconds of camera time (fps 0 keeps all).

    Periods are counted from the first frame, so jitter does not drift the phase, and after
    a gap the next frame is just the first of its period (no burst to catch up). The frame
    kept for a period is the one nearest its start: a frame that comes less than half a
    camera interval before the start counts for that period, because the camera's next
    frame would come later than this one is early. So a 10 fps camera sampled at 1 fps
    gives the frames at 0 s, 1 s, 2 s..., and a camera at the target rate keeps every frame
    despite jitter. A stamp earlier than the last one means a new stream (a looped bag, a
    reset clock): counting restarts there.
    """

    def __init__(self, fps: float):
        if fps < 0:
            raise ValueError(f"fps must be >= 0, got {fps}")
        self.fps = fps
        self.period_ns = round(1e9 / fps) if fps > 0 else 0
        self._origin_ns: int | None = None
        self._seen_ns: int | None = None  # the previous frame, kept or not
        self._interval_ns = 0  # the camera's last frame interval
        self._last_period = -1

    def restart(self) -> None:
        """A new stream: its next frame is kept and periods count from it."""
        self._origin_ns = self._seen_ns = None

    def accept(self, stamp_ns: int) -> bool:
        if self._seen_ns is not None and stamp_ns < self._seen_ns:
            self._origin_ns = None
        self._interval_ns = stamp_ns - self._seen_ns if self._origin_ns is not None else 0
        self._seen_ns = stamp_ns
        if self._origin_ns is None:
            self._origin_ns, self._last_period = stamp_ns, 0
            return True
        if self.period_ns == 0:
            return True
        early = min(self._interval_ns, self.period_ns) // 2
        period = (stamp_ns - self._origin_ns + early) // self.period_ns
        if period <= self._last_period:
            return False
        self._last_period = period
        return True
