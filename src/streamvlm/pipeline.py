"""StreamingVLM: VisionStage + LanguageStage in one object, for scripts and notebooks."""

from __future__ import annotations

import logging

import numpy as np

from streamvlm.config import PipelineConfig
from streamvlm.llm.stage import LanguageStage
from streamvlm.models import VisionLanguageModel, load_model
from streamvlm.metrics import ThrottledLog
from streamvlm.timeline import RESET
from streamvlm.types import Answer, Caption
from streamvlm.vision.stage import VisionStage

log = logging.getLogger(__name__)


class StreamingVLM:
    def __init__(self, cfg: PipelineConfig, model: VisionLanguageModel):
        self.cfg = cfg
        self.model = model  # loaded once, shared by both stages
        self.vision = VisionStage(cfg, model)
        self.language = LanguageStage(cfg, model)
        self.timeline = self.vision.timeline  # one timeline: both stages take the same frames
        self._warn = ThrottledLog(log.warning)

    @classmethod
    def from_config(cls, cfg: PipelineConfig | None = None) -> "StreamingVLM":
        cfg = cfg or PipelineConfig()
        return cls(cfg, load_model(cfg.model))

    def push(self, frame_rgb: np.ndarray, stamp_ns: int) -> Caption | None:
        """Feed one camera frame; returns a caption when one is due.

        Stamps go through the stream's Timeline (see timeline.py): a late frame is dropped and
        counted, and a time jump (a looped bag, a reset clock, a long gap) starts a new stream
        or continues this one with shifted stamps, as `stream.on_time_jump` says.
        """
        placed = self.timeline.admit(stamp_ns, self._warn, "frames")
        if placed is None:
            return None
        if placed.verdict == RESET:
            self.vision.reset()
            self.vision.sampler.restart()
            self.language.reset()
        batch = self.vision.process(frame_rgb, placed.stamp_ns)
        if batch is None:
            return None
        self.language.ingest(batch)
        return self.language.maybe_caption()

    def reconfigure(self, cfg: PipelineConfig) -> None:
        """Take new run-time settings between two frames (both stages check before either
        changes: a change one stage refuses changes nothing)."""
        self.vision.check_change(cfg)
        self.language.check_change(cfg)
        self.vision.reconfigure(cfg)
        self.language.reconfigure(cfg)
        self.cfg = cfg

    @property
    def dropped_late(self) -> int:
        """Frames older than the newest, within the reorder window (the timeline counts them)."""
        return self.timeline.late

    def ask(self, question: str, max_new_tokens: int | None = None) -> Answer:
        return self.language.ask(question, max_new_tokens)
