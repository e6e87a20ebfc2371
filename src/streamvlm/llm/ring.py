"""Runs of rows kept in a few preallocated tensors, added at the tail and dropped from the
head: the storage of long-term memory.

Why not a tensor per frame: thousands of small tensors, and the temporaries that made
them, left the heap fragmented; over 2000 frames of the tiny model the process grew 28.5
MiB while the store held 13.5 (`bench kv`), and `malloc_trim` gave most of it back. Here
the store is a few large tensors whose size only changes when they grow.

Each run (a frame's kept tokens) is contiguous; one that does not fit before the end
starts again at row 0, leaving the end idle until the head passes it. The tensors grow by
doubling up to `limit` rows (the memory's byte budget); at the limit the caller drops its
oldest runs until a new one fits.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import torch

Parts = tuple  # of torch.Tensor | None, each [rows, ...]


def _map(parts: Parts, fn) -> Parts:
    return tuple(None if t is None else fn(t) for t in parts)


def _nbytes(parts: Parts) -> int:
    return sum(t.numel() * t.element_size() for t in parts if t is not None)


class Ring:
    """Runs of rows of one or more parts (same row count, each its own row shape and dtype)."""

    def __init__(self, place: Callable[[int], torch.device]):
        self._place = place  # bytes wanted -> the device to hold them (accelerator while it has room)
        self.parts: Parts | None = None  # each [capacity, ...]
        self.capacity = 0
        self.runs: deque[tuple[int, int]] = deque()  # (first row, rows), oldest first

    def __len__(self) -> int:
        return len(self.runs)

    @property
    def nbytes(self) -> int:
        """Bytes the tensors hold, used or not."""
        return 0 if self.parts is None else _nbytes(self.parts)

    def clear(self) -> None:
        self.parts, self.capacity = None, 0
        self.runs.clear()

    def append(self, rows: Parts, limit: int | None) -> bool:
        """Add a run [n, ...] at the tail; False when it does not fit in `limit` rows (None: no
        limit) with the runs held: the caller drops the oldest and tries again."""
        count = int(rows[0].shape[0])
        first = self._room(count)
        if first is None:
            if limit is not None and self.capacity >= limit:
                return False
            live = sum(n for _, n in self.runs)
            wanted = max(2 * self.capacity, 2 * (live + count), 1024)
            self._grow(min(wanted, limit) if limit is not None else wanted, rows)
            first = self._room(count)
            if first is None:
                return False
        for part, new in zip(self.parts, rows):
            if part is not None:
                part[first:first + count] = new  # copy_ waits where it must (towards the host)
        self.runs.append((first, count))
        return True

    def popleft(self) -> None:
        self.runs.popleft()  # its rows are reused by later runs; the tensors stay

    def run(self, index: int) -> Parts:
        """Views of run `index`'s rows."""
        first, count = self.runs[index]
        return _map(self.parts, lambda t: t[first:first + count])

    def _room(self, count: int) -> int | None:
        if self.parts is None:
            return None
        if not self.runs:
            return 0 if count <= self.capacity else None
        head = self.runs[0][0]
        tail = self.runs[-1][0] + self.runs[-1][1]
        if tail > head:  # live rows in one piece [head, tail): room after it, else before it
            if self.capacity - tail >= count:
                return tail
            return 0 if head >= count else None
        return tail if head - tail >= count else None  # wrapped: room between tail and head

    def _grow(self, capacity: int, like: Parts) -> None:
        """New tensors of `capacity` rows holding the live runs, in order, from row 0."""
        device = self._place(_nbytes(_map(like, lambda t: t[:1])) * capacity)
        pin = device.type == "cpu" and torch.cuda.is_available()  # one fast copy back for an answer

        def empty(t: torch.Tensor) -> torch.Tensor:
            out = torch.empty((capacity, *t.shape[1:]), dtype=t.dtype, device=device)
            return out.pin_memory() if pin else out

        parts = _map(like, empty)
        row, runs = 0, deque()
        for first, count in self.runs:
            for new, old in zip(parts, self.parts):
                if new is not None:
                    new[row:row + count] = old[first:first + count].to(device)
            runs.append((row, count))
            row += count
        self.parts, self.capacity, self.runs = parts, capacity, runs
