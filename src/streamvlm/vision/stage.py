"""VisionStage: camera frame -> visual tokens in the LLM's embedding space."""

from __future__ import annotations

import numpy as np
import torch

from streamvlm.backends import make_backend
from streamvlm.config import PipelineConfig
from streamvlm.debug_view import FrameView
from streamvlm.models import VisionLanguageModel, load_model
from streamvlm.timeline import Timeline
from streamvlm.types import TokenBatch
from streamvlm.vision.delta_cache import DeltaViT
from streamvlm.vision.pruner import TokenPruner
from streamvlm.vision.sampler import FrameSampler


class VisionStage:
    def __init__(self, cfg: PipelineConfig, model: VisionLanguageModel, backend=None):
        """`backend`: another camera's stage's (`encoder.backend`), so several cameras share
        one ONNX session or TensorRT engine; None makes one from `cfg.vision.backend`."""
        self.cfg = cfg
        self.model = model
        backend = backend if backend is not None else make_backend(cfg.vision.backend, model.tower, model.name)
        self.encoder = DeltaViT(model.tower, cfg.vision.delta, backend)  # mode "off": the full ViT every frame
        self.pruner = TokenPruner(cfg.vision.prune)
        self.sampler = FrameSampler(cfg.vision.fps)
        self.timeline = Timeline(cfg.stream)  # applied by whoever receives the frames (worker, pipeline)
        self.frames_seen = 0
        self.frames_processed = 0
        self.last_view: FrameView | None = None  # what the last frame's ViT and pruner did (debug_view.draw)
        self._extent = _grid_extent(model)

    @classmethod
    def from_config(cls, cfg: PipelineConfig, model: VisionLanguageModel | None = None) -> "VisionStage":
        return cls(cfg, model if model is not None else load_model(cfg.model))

    def check_change(self, cfg: PipelineConfig) -> None:
        """Raise ValueError when `cfg` cannot be taken while running (the model and the backend
        are fixed); the settings sections validated themselves when `cfg` was built."""
        if cfg.model != self.cfg.model:
            raise ValueError("the model settings are fixed while running; reconfigure the node to change them")
        if cfg.vision.backend != self.cfg.vision.backend:
            raise ValueError("vision.backend.* is fixed while running; reconfigure the node to change it")

    def retime(self, cfg: PipelineConfig) -> None:
        """The parts of a change that whoever admits frames applies, under its own lock: the
        sampling rate and the time policy (a worker's `submit` reads them on the camera's thread)."""
        if cfg.vision.fps != self.sampler.fps:
            self.sampler = FrameSampler(cfg.vision.fps)
        self.timeline.cfg = cfg.stream

    def reconfigure(self, cfg: PipelineConfig) -> None:
        """Take new run-time settings, between frames, on the thread that encodes them. Each
        component's settings object is swapped whole."""
        self.check_change(cfg)
        self.retime(cfg)
        if cfg.vision.prune != self.pruner.settings:
            self.pruner = TokenPruner(cfg.vision.prune)
        if cfg.vision.delta != self.encoder.settings:
            self.encoder.settings = cfg.vision.delta
            self.encoder.reset()  # the next frame is a full pass under the new settings
        self.cfg = cfg

    def reset(self) -> None:
        """A new stream: the next frame gets a full ViT pass and all its tokens are new. The
        sampler restarts itself when stamps go back; `sampler.restart()` forces it."""
        self.encoder.reset()
        self.pruner.reset()

    def process(self, frame_rgb: np.ndarray, stamp_ns: int) -> TokenBatch | None:
        """One camera frame -> its tokens, or None when the sampling rate skips it."""
        _check_frame(frame_rgb)
        if not self.accept(stamp_ns):
            return None
        return self.encode_frame(frame_rgb, stamp_ns)

    def accept(self, stamp_ns: int) -> bool:
        """Whether the sampling rate takes a frame with this stamp; decides from the stamp alone,
        so a node can skip decoding the frames it will not use."""
        self.frames_seen += 1
        return self.sampler.accept(stamp_ns)

    def encode_frame(self, frame_rgb: np.ndarray, stamp_ns: int) -> TokenBatch:
        """An accepted frame -> its tokens."""
        _check_frame(frame_rgb)
        tokens, grid = self.encode(self.model.preprocess(frame_rgb))
        selection = self.pruner.select(tokens[0], stamp_ns)
        batch = TokenBatch(
            stamp_ns=stamp_ns,
            frame_index=self.frames_processed,
            embeddings=tokens[0, selection.keep],
            positions=selection.keep,
            grid=grid,
            novelty=selection.novelty,
            reuse_ratio=self.encoder.last.reuse_ratio,
            model=self.model.name,
        )
        self.frames_processed += 1
        self.last_view = FrameView(stamp_ns, self.encoder.last.recomputed, self.model.tower.patch_grid,
                                   selection.keep, grid, self._extent)
        return batch

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalized pixels [1, 3, H, W] of the next frame -> all its tokens [1, N, D] (before pruning)
        and their grid (rows, cols)."""
        return self.model.project(self.encoder(pixels))


def _grid_extent(model: VisionLanguageModel) -> float:
    """The share of the frame's side the patch grid covers: SigLIP's 27 patches of 14 px
    leave 6 of 384 px unseen; Qwen's and SmolVLM's grids cover their frame."""
    conv = getattr(model.tower.embed, "patch_embedding", None)
    if isinstance(conv, torch.nn.Conv2d):
        return min(1.0, model.tower.patch_grid[0] * conv.kernel_size[0] / model.image_size)
    return 1.0


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"expected an RGB uint8 frame [H, W, 3], got {desc}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"empty frame {frame.shape}")
