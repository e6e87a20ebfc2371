"""Stream time: where each frame's stamp puts it, and what to do when the clock jumps.

Camera stamps are not always monotonic. A frame may come a little late (two messages
swapped in transit), a bag played with `--loop` jumps back to its start, a robot's clock
may be reset, and a camera may stall for minutes. The context must stay in time order, so:

- a frame at most `max_reorder_s` older than the newest is late: dropped and counted;
- a frame older still, or one after a gap longer than `max_gap_s`, is a time jump, handled
  by `on_time_jump`:
  - `reset`: a new stream starts at that frame; the stages clear their context, memory and
    delta caches (what the old stream saw says nothing about the new one);
  - `continue`: the context stays. After a jump back, this and later stamps are shifted so
    the stream goes on one frame interval after its newest frame; a gap is kept as it is.

Both stages apply the same policy to their own input, so the encoder and the language
model agree without talking: in `continue` the encoder's shifted stamps reach the language
model already in order, and in `reset` both see the same jump.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from streamvlm.fields import check, setting

NEXT, LATE, RESET, JUMP = "next", "late", "reset", "jump"
_DEFAULT_INTERVAL_NS = 100_000_000  # before two frames have shown the camera's interval
_LONGEST_INTERVAL_NS = 5_000_000_000  # a longer step is a pause, not the camera's rate


@dataclass(frozen=True)
class StreamConfig:
    """`stream.*`: what a stage does when camera time jumps."""

    on_time_jump: str = setting("reset", "when stamps jump back or a long gap comes: reset (start a new stream: "
                                "clear the context and memory) or continue (keep them; stamps after a jump back are "
                                "shifted to follow on)", choices=("reset", "continue"))
    max_gap_s: float = setting(120.0, "a forward gap between frames longer than this is a time jump (0: gaps never "
                               "are)", range=(0.0, 1e9))
    max_reorder_s: float = setting(1.0, "a frame at most this much older than the newest is late and dropped; older "
                                   "still, the clock jumped back (a looped bag, a reset clock)", range=(0.0, 1e9))

    def __post_init__(self):
        check(self)



@dataclass(frozen=True)
class Placement:
    verdict: str  # NEXT; LATE (drop it); RESET (start a new stream with it); JUMP (continued over a jump)
    stamp_ns: int  # the stamp to use downstream (shifted after a jump back under `continue`)
    event: str = ""  # what happened, for the log, when it was not NEXT


class Timeline:
    def __init__(self, cfg: StreamConfig):
        self.cfg = cfg
        self._newest_in: int | None = None  # newest stamp as it came
        self._newest_out: int | None = None  # the same frame's stamp downstream
        self._offset_ns = 0  # added to incoming stamps (only `continue` after a jump back sets it)
        self._interval_ns = _DEFAULT_INTERVAL_NS
        self.late = 0
        self.jumps_back = 0
        self.gaps = 0
        self.resets = 0

    def describe(self) -> str:
        """The policy in words, for diagnostics."""
        gap = f"a gap over {self.cfg.max_gap_s:g} s" if self.cfg.max_gap_s else "no gap"
        return (f"{self.cfg.on_time_jump} on a jump back over {self.cfg.max_reorder_s:g} s or {gap}; "
                f"later frames within {self.cfg.max_reorder_s:g} s are dropped as late")

    def status(self) -> dict[str, object]:
        return {"time jump policy": self.describe(), "time jumps back": self.jumps_back, "time gaps": self.gaps,
                "stream resets": self.resets}

    def place(self, stamp_ns: int) -> Placement:
        if self._newest_in is None:
            return self._take(stamp_ns, NEXT)
        step = stamp_ns - self._newest_in
        if step <= 0 and -step <= self.cfg.max_reorder_s * 1e9:
            self.late += 1
            return Placement(LATE, stamp_ns + self._offset_ns,
                             f"a frame {-step / 1e9:.3f} s older than the newest came late")
        if step < 0:
            self.jumps_back += 1
            event = f"time jumped back {-step / 1e9:.1f} s"
        elif self.cfg.max_gap_s and step > self.cfg.max_gap_s * 1e9:
            self.gaps += 1
            event = f"no frame for {step / 1e9:.1f} s"
        else:
            if step < _LONGEST_INTERVAL_NS:
                self._interval_ns = step  # the camera's interval, not a pause's
            return self._take(stamp_ns, NEXT)
        if self.cfg.on_time_jump == "reset":
            self.resets += 1
            self._offset_ns = 0
            return self._take(stamp_ns, RESET, f"{event}: a new stream starts")
        if step < 0:
            self._offset_ns = self._newest_out + self._interval_ns - stamp_ns
        return self._take(stamp_ns, JUMP, f"{event}: the stream continues")

    def admit(self, stamp_ns: int, warn: Callable[[str, str], None], what: str) -> Placement | None:
        """`place`, logging what was not NEXT through `warn(kind, text)` (a ThrottledLog);
        None for a late frame, which the caller drops (`late` counts it)."""
        placed = self.place(stamp_ns)
        if placed.verdict == LATE:
            warn("late", f"dropped late {what} ({self.late} so far): {placed.event}")
            return None
        if placed.verdict != NEXT:
            warn("time", f"{placed.event} ({self.describe()})")
        return placed

    def restart(self) -> None:
        """Forget the newest stamp (another camera started the stream anew); counts stay."""
        self._newest_in = self._newest_out = None
        self._offset_ns = 0

    def _take(self, stamp_ns: int, verdict: str, event: str = "") -> Placement:
        self._newest_in = stamp_ns
        self._newest_out = stamp_ns + self._offset_ns
        return Placement(verdict, self._newest_out, event)


class CameraTimelines:
    """The timelines of a stream of several cameras, one per camera, as the language model
    receives them. Each camera's frames come in its own time order, but two cameras' frames
    interleave and may cross in transit (one encoded a little faster): that is not lateness,
    so each is placed against its own camera's newest. A time jump that resets the stream
    resets it for every camera, so their timelines start over too."""

    def __init__(self, cfg: StreamConfig):
        self._cfg = cfg
        self.by_camera: dict[str, Timeline] = {}

    @property
    def cfg(self) -> StreamConfig:
        return self._cfg

    @cfg.setter
    def cfg(self, cfg: StreamConfig) -> None:
        self._cfg = cfg
        for timeline in self.by_camera.values():
            timeline.cfg = cfg

    def admit(self, stamp_ns: int, warn: Callable[[str, str], None], what: str, camera: str = ""
              ) -> Placement | None:
        """`Timeline.admit` against `camera`'s own newest frame."""
        timeline = self.by_camera.get(camera)
        if timeline is None:
            timeline = self.by_camera[camera] = Timeline(self._cfg)
        placed = timeline.admit(stamp_ns, warn, what)
        if placed is not None and placed.verdict == RESET:
            for other in self.by_camera.values():
                if other is not timeline:
                    other.restart()
        return placed

    @property
    def late(self) -> int:
        return sum(t.late for t in self.by_camera.values())

    def describe(self) -> str:
        return Timeline(self._cfg).describe()

    def status(self) -> dict[str, object]:
        timelines = self.by_camera.values()
        return {"time jump policy": self.describe(), "time jumps back": sum(t.jumps_back for t in timelines),
                "time gaps": sum(t.gaps for t in timelines), "stream resets": sum(t.resets for t in timelines)}
