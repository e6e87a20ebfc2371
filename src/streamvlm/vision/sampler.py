"""Which camera frames to process, by their stamps, at a target rate."""

from __future__ import annotations


class FrameSampler:
    """Keeps the first frame of each period of 1/fps seconds of camera time (fps 0 keeps all).

    Periods are counted from the first frame, so camera jitter does not drift the phase,
    and after a gap the next frame is simply the first of its period (no burst to catch
    up). A frame up to 5% of a period early counts for the next period, so a camera whose
    rate equals the target rate is not halved by jitter. A stamp earlier than the last
    kept one means a new stream (a looped bag, a reset clock): the count restarts there.
    """

    TOLERANCE = 0.05

    def __init__(self, fps: float):
        if fps < 0:
            raise ValueError(f"fps must be >= 0, got {fps}")
        self.period_ns = round(1e9 / fps) if fps > 0 else 0
        self._origin_ns: int | None = None
        self._last_ns = 0
        self._last_period = -1

    def accept(self, stamp_ns: int) -> bool:
        if self._origin_ns is None or stamp_ns < self._last_ns:
            self._origin_ns, self._last_period = stamp_ns, -1
        if self.period_ns == 0:
            self._last_ns = stamp_ns
            return True
        early = round(self.TOLERANCE * self.period_ns)
        period = (stamp_ns - self._origin_ns + early) // self.period_ns
        if period <= self._last_period:
            return False
        self._last_ns, self._last_period = stamp_ns, period
        return True
