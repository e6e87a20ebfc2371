"""A run-time settings change handed from the thread that validated it to the worker
thread that applies it.

A stage's components (delta cache, pruner, KV cache, memory) are in use while the worker
encodes a frame or answers a question, so a change made by `ros2 param set` on an
executor thread must wait for the worker to be between two of them. The owner holds its
own lock around every call here.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

Settings = TypeVar("Settings")


class PendingChange(Generic[Settings]):
    def __init__(self, apply: Callable[[Settings], None], warn: Callable[[str, str], None]):
        self._apply = apply
        self._warn = warn  # (kind, message), throttled by the owner
        self._waiting: Settings | None = None
        self.applied = 0  # changes taken
        self.failed = 0  # changes whose application raised (validated before, so a bug)

    @property
    def waiting(self) -> bool:
        return self._waiting is not None

    def offer(self, settings: Settings, idle: bool) -> None:
        """Queue a validated change; a newer one replaces one not yet taken. `idle`: no
        worker thread is running, so it is applied now."""
        self._waiting = settings
        if idle:
            self.take()

    def take(self) -> None:
        """Apply the waiting change, if any (on the worker thread, between two items)."""
        settings, self._waiting = self._waiting, None
        if settings is None:
            return
        try:
            self._apply(settings)
            self.applied += 1
        except Exception as err:  # noqa: BLE001 - the worker must go on whatever a change does
            self.failed += 1
            self._warn("reconfigure", f"applying new settings failed: {type(err).__name__}: {err}")
