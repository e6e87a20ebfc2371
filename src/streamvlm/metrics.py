"""Small measuring helpers shared by the stage workers: recent latencies and throttled logs."""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

import numpy as np


class RecentValues:
    """The last `size` values of something (ms per frame, tokens per frame...), thread-safe."""

    def __init__(self, size: int = 200):
        self._values: collections.deque[float] = collections.deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._values.append(float(value))

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) of the recent values; 0.0 before the first."""
        with self._lock:
            values = list(self._values)
        return float(np.percentile(values, q)) if values else 0.0

    def mean(self) -> float:
        with self._lock:
            values = list(self._values)
        return float(np.mean(values)) if values else 0.0

    def __len__(self) -> int:
        return len(self._values)


class ThrottledLog:
    """At most one line per `period_s` for each kind of event, saying how many were not logged.

    A camera sending garbage at 30 Hz must not flood the log, but the first occurrence
    and the running count must be visible.
    """

    def __init__(self, write: Callable[[str], None], period_s: float = 5.0):
        self._write = write
        self._period_s = period_s
        self._last: dict[str, float] = {}
        self._silenced: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, kind: str, text: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -float("inf")) < self._period_s:
                self._silenced[kind] += 1
                return
            self._last[kind] = now
            silenced = self._silenced.pop(kind, 0)
        self._write(text + (f" ({silenced} more like this not logged)" if silenced else ""))
