"""StreamingVLM: VisionStage + LanguageStage in one object, for scripts and notebooks."""

from __future__ import annotations

import logging

import numpy as np

from streamvlm.config import PipelineConfig
from streamvlm.llm.stage import LanguageStage
from streamvlm.models import VisionLanguageModel, load_model
from streamvlm.types import Answer, Caption
from streamvlm.vision.stage import VisionStage

log = logging.getLogger(__name__)


class StreamingVLM:
    def __init__(self, cfg: PipelineConfig, model: VisionLanguageModel):
        self.cfg = cfg
        self.model = model  # loaded once, shared by both stages
        self.vision = VisionStage(cfg, model)
        self.language = LanguageStage(cfg, model)
        self.dropped_stale = 0  # frames not newer than the newest in the context

    @classmethod
    def from_config(cls, cfg: PipelineConfig | None = None) -> "StreamingVLM":
        cfg = cfg or PipelineConfig()
        return cls(cfg, load_model(cfg.model))

    def push(self, frame_rgb: np.ndarray, stamp_ns: int) -> Caption | None:
        """Feed one camera frame; returns a caption when one is due.

        A frame whose stamp is not after the newest frame in the context (a looped bag, a
        clock jump) is dropped and counted: the context is in time order.
        """
        if self.language.has_frames and stamp_ns <= self.language.newest_stamp_ns:
            self.dropped_stale += 1
            if self.dropped_stale == 1 or self.dropped_stale % 100 == 0:
                log.warning("dropped %d frames older than the newest in the context (stamp %d <= %d)",
                            self.dropped_stale, stamp_ns, self.language.newest_stamp_ns)
            return None
        batch = self.vision.process(frame_rgb, stamp_ns)
        if batch is None:
            return None
        self.language.ingest(batch)
        return self.language.maybe_caption()

    def ask(self, question: str, max_new_tokens: int | None = None) -> Answer:
        return self.language.ask(question, max_new_tokens)
