"""VisionWorker: runs a VisionStage on its own thread behind a one-frame slot.

A camera callback must never wait for the ViT, and a slow encoder must never build a
queue (every queued frame is latency added to every answer). So `submit` returns at once:
frames the sampling rate does not want are skipped from their stamp alone, without
decoding; a wanted frame waits in a single slot, and a newer wanted frame arriving before
the worker took it replaces it (counted in `dropped_busy`). This is the drop-oldest,
depth-one queue of ROS image_pipeline's camera_calibration, without any ROS types: the
caller supplies `decode` for whatever its frames are (a sensor_msgs/Image, a file...).

Run-time settings changes (`reconfigure`) are validated at once, on the caller's thread,
so a bad one is refused with its reason; they are applied on the worker thread between
two frames, because the delta cache and the pruner are in use while a frame is encoded.

Stamps go through the stage's Timeline first: late frames are dropped, and a time jump
either resets the stream (the worker thread resets the stage before the jump's frame) or
continues with shifted stamps (see timeline.py).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Generic, TypeVar

import numpy as np

from streamvlm.config import PipelineConfig, settings_status
from streamvlm.debug_view import FrameView
from streamvlm.image import ImageError
from streamvlm.metrics import RecentValues, ThrottledLog
from streamvlm.pending import PendingChange
from streamvlm.timeline import RESET
from streamvlm.types import TokenBatch
from streamvlm.vision.stage import VisionStage

Item = TypeVar("Item")
log = logging.getLogger(__name__)


class VisionWorker(Generic[Item]):
    def __init__(self, stage: VisionStage, decode: Callable[[Item], np.ndarray],
                 on_batch: Callable[[TokenBatch], None], warn: Callable[[str], None] = log.warning):
        self.stage = stage
        self._decode = decode
        self._on_batch = on_batch
        # Called with each processed frame and what the stage did with it (the debug image);
        # None: the frame is not kept past encoding.
        self.on_view: Callable[[np.ndarray, FrameView], None] | None = None
        self._warn = ThrottledLog(warn)
        self._slot: tuple[int, Item, float] | None = None  # stamp, frame, monotonic arrival
        self._reset_pending = False  # a new stream began: reset the stage before the next frame
        self._change = PendingChange(stage.reconfigure, self._warn)  # settings to take before the next frame
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self.received = 0  # frames offered by the camera
        self.skipped = 0  # not wanted at the sampling rate
        self.processed = 0  # encoded and handed on
        self.dropped_busy = 0  # wanted, but replaced by a newer frame while the encoder was busy
        self.dropped_invalid = 0  # could not be decoded
        self.failed = 0  # the encoder raised; logged, and the worker goes on
        self.ms_per_frame = RecentValues()  # decode + encode + hand-on
        self.ms_waiting = RecentValues()  # arrival to the start of encoding: bounded by one frame's work
        self.tokens_per_frame = RecentValues()  # sent to the LLM, after pruning
        self.novelty = RecentValues()  # share of a frame's tokens that changed
        self.reuse_ratio = RecentValues()
        self.last_frame_monotonic = 0.0

    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._run, name="vision-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stops after the frame in hand (an encode is not interruptible); a waiting frame is discarded."""
        with self._cond:
            self._running = False
            self._slot = None
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        with self._cond:
            self._change.take()  # no thread uses the stage now

    def reconfigure(self, cfg: PipelineConfig) -> None:
        """Take new run-time settings: refused now with ValueError, or applied between frames.
        The sampling rate and time policy apply at once (`submit` reads them under the lock)."""
        self.stage.check_change(cfg)
        with self._cond:
            self.stage.retime(cfg)
            self._change.offer(cfg, idle=self._thread is None)
            self._cond.notify()

    def submit(self, stamp_ns: int, item: Item) -> bool:
        """Offer a camera frame; returns at once. True when it was taken for encoding."""
        with self._cond:
            self.received += 1
            self.last_frame_monotonic = time.monotonic()
            if not self._running:
                self.skipped += 1
                return False
            placed = self.stage.timeline.admit(stamp_ns, self._warn, "frames")
            if placed is None:
                return False
            if placed.verdict == RESET:
                self.stage.sampler.restart()
                self._reset_pending = True
            stamp_ns = placed.stamp_ns
            if not self.stage.accept(stamp_ns):
                self.skipped += 1
                return False
            if self._slot is not None:
                self.dropped_busy += 1
                self._warn("busy", f"encoder slower than the camera: {self.dropped_busy} frames dropped so far")
            self._slot = (stamp_ns, item, time.monotonic())
            self._cond.notify()
        return True

    @property
    def dropped_late(self) -> int:
        """Frames older than the newest, within the reorder window (the timeline counts them)."""
        return self.stage.timeline.late

    def status(self) -> dict[str, Any]:
        """Figures for diagnostics, by name."""
        return {
            "frames received": self.received,
            "frames skipped by rate": self.skipped,
            "frames processed": self.processed,
            "frames dropped (busy)": self.dropped_busy,
            "frames dropped (late)": self.dropped_late,
            "frames dropped (invalid)": self.dropped_invalid,
            "frames failed": self.failed + self._change.failed,
            "ms per frame p50": round(self.ms_per_frame.percentile(50), 1),
            "ms per frame p95": round(self.ms_per_frame.percentile(95), 1),
            "ms waiting p95": round(self.ms_waiting.percentile(95), 1),
            "tokens per frame": round(self.tokens_per_frame.mean(), 1),
            "changed token share": round(self.novelty.mean(), 3),
            "delta-cache reuse ratio": round(self.reuse_ratio.mean(), 3),
            **self.stage.timeline.status(),
            "settings changes applied": self._change.applied,
            **settings_status(self.stage.cfg, ("vision", "stream")),
        }

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._running and self._slot is None and not self._change.waiting:
                    self._cond.wait()
                if not self._running:
                    return
                self._change.take()  # between frames: nothing else touches the stage now
                if self._slot is None:
                    continue
                stamp_ns, item, arrived = self._slot
                self._slot = None
                reset, self._reset_pending = self._reset_pending, False
            if reset:
                self.stage.reset()
            self.ms_waiting.add((time.monotonic() - arrived) * 1e3)
            self._process(stamp_ns, item)

    def _process(self, stamp_ns: int, item: Item) -> None:
        start = time.perf_counter()
        try:
            frame = self._decode(item)
            batch = self.stage.encode_frame(frame, stamp_ns)
        except (ImageError, ValueError) as err:
            self.dropped_invalid += 1
            self._warn("invalid", f"dropped an invalid frame ({self.dropped_invalid} so far): {err}")
            return
        except Exception as err:  # noqa: BLE001 - the worker must outlive any one frame
            self.failed += 1
            self._warn("failed", f"encoding a frame failed ({self.failed} so far): {type(err).__name__}: {err}")
            return
        try:
            self._on_batch(batch)
        except Exception as err:  # noqa: BLE001
            self.failed += 1
            self._warn("hand-on", f"handing tokens on failed: {type(err).__name__}: {err}")
            return
        self.processed += 1
        self.ms_per_frame.add((time.perf_counter() - start) * 1e3)
        if self.on_view is not None:
            try:
                self.on_view(frame, self.stage.last_view)
            except Exception as err:  # noqa: BLE001 - a picture must not stop the tokens
                self._warn("view", f"the debug image failed: {type(err).__name__}: {err}")
        self.tokens_per_frame.add(batch.num_tokens)
        self.novelty.add(batch.novelty)
        self.reuse_ratio.add(batch.reuse_ratio)
