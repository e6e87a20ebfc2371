"""StreamingVLM: VisionStage + LanguageStage in one object, for scripts and notebooks."""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from streamvlm.cameras import MAX_CAMERAS, camera_error
from streamvlm.config import PipelineConfig
from streamvlm.llm.stage import LanguageStage
from streamvlm.metrics import ThrottledLog
from streamvlm.models import VisionLanguageModel, load_model
from streamvlm.timeline import RESET
from streamvlm.types import Alert, Answer, Caption
from streamvlm.vision.stage import VisionStage

log = logging.getLogger(__name__)


class StreamingVLM:
    def __init__(self, cfg: PipelineConfig, model: VisionLanguageModel):
        self.cfg = cfg
        self.model = model  # loaded once, shared by both stages
        self.vision = VisionStage(cfg, model)  # the first camera's (the only one's, usually)
        # Each camera of the stream keeps its own delta cache, pruner, sampler and timeline;
        # they share the model and the ViT backend.
        self.cameras: dict[str, VisionStage] = {}
        self.language = LanguageStage(cfg, model)
        self.on_alert: Callable[[Alert], None] | None = None  # alerts that fire (language.alerts.rules)
        self._warn = ThrottledLog(log.warning)

    @classmethod
    def from_config(cls, cfg: PipelineConfig | None = None) -> "StreamingVLM":
        cfg = cfg or PipelineConfig()
        return cls(cfg, load_model(cfg.model))

    def vision_for(self, camera: str = "") -> VisionStage:
        """The vision stage of `camera`, made at its first frame."""
        stage = self.cameras.get(camera)
        if stage is not None:
            return stage
        error = camera_error(camera)
        if error:
            raise ValueError(error)
        if len(self.cameras) >= MAX_CAMERAS:
            raise ValueError(f"a camera {camera!r} beyond the {MAX_CAMERAS} this stream already has")
        stage = self.vision if not self.cameras else VisionStage(self.cfg, self.model, self.vision.encoder.backend)
        self.cameras[camera] = stage
        return stage

    def push(self, frame_rgb: np.ndarray, stamp_ns: int, camera: str = "") -> Caption | None:
        """Feed one camera frame; returns a caption when one is due. `camera` names it in a
        stream of several ("" : the only one).

        Stamps go through the camera's Timeline (see timeline.py): a late frame is dropped and
        counted, and a time jump (a looped bag, a reset clock, a long gap) starts a new stream
        (for every camera) or continues this one with shifted stamps, as `stream.on_time_jump` says.
        """
        stage = self.vision_for(camera)
        placed = stage.timeline.admit(stamp_ns, self._warn, "frames")
        if placed is None:
            return None
        if placed.verdict == RESET:
            for other in self.cameras.values():
                other.reset()
                other.sampler.restart()
                if other is not stage:
                    other.timeline.restart()
            self.language.reset()
        batch = stage.process(frame_rgb, placed.stamp_ns)
        if batch is None:
            return None
        batch.camera = camera
        self.language.ingest(batch)
        for alert in self.language.check_alerts(batch):
            if self.on_alert is not None:
                self.on_alert(alert)
        return self.language.maybe_caption()

    def reconfigure(self, cfg: PipelineConfig) -> None:
        """Take new run-time settings between two frames (both stages check before either
        changes: a change one stage refuses changes nothing)."""
        self.vision.check_change(cfg)
        self.language.check_change(cfg)
        for stage in {id(s): s for s in [self.vision, *self.cameras.values()]}.values():
            stage.reconfigure(cfg)
        self.language.reconfigure(cfg)
        self.cfg = cfg

    @property
    def timeline(self):
        """The first (or only) camera's timeline."""
        return self.vision.timeline

    @property
    def dropped_late(self) -> int:
        """Frames older than their camera's newest, within the reorder window (counted by the timelines)."""
        stages = self.cameras.values() or [self.vision]
        return sum(stage.timeline.late for stage in stages)

    def ask(self, question: str, max_new_tokens: int | None = None) -> Answer:
        return self.language.ask(question, max_new_tokens)
