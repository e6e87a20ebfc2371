"""Counts from the reliability tests (fuzzing, load, fault injection), printed after the run.

Tests add what they tried and how it ended; `pytest_terminal_summary` in conftest.py
prints the totals, so a CI log shows how much bad input, load and failure was exercised.
"""

from __future__ import annotations

import collections
import threading


class Tally:
    def __init__(self):
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lock = threading.Lock()

    def add(self, group: str, outcome: str, count: int = 1) -> None:
        """`group`: what was tried ("raw Image", "ask"...); `outcome`: how it ended."""
        with self._lock:
            self._counts[(group, outcome)] += count

    def count(self, group: str, outcome: str | None = None) -> int:
        with self._lock:
            return sum(n for (g, o), n in self._counts.items() if g == group and outcome in (None, o))

    def summary(self) -> list[str]:
        with self._lock:
            groups: dict[str, dict[str, int]] = {}
            for (group, outcome), n in sorted(self._counts.items()):
                groups.setdefault(group, {})[outcome] = n
        return [f"{group}: {sum(outcomes.values())} tried: "
                + ", ".join(f"{outcome} {n}" for outcome, n in outcomes.items())
                for group, outcomes in groups.items()]


TALLY = Tally()
