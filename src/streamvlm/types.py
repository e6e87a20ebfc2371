"""Data passed between the stages. Plain containers, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Frame:
    """A decoded camera frame from a bag or a video file."""

    stamp_ns: int  # camera time (header stamp; the recording time where the header has none)
    log_ns: int  # when it was recorded
    rgb: np.ndarray  # [H, W, 3] uint8
    camera: str = ""  # which camera, in a recording of several ("" : the only one)


@dataclass
class TokenBatch:
    """Visual tokens of one frame, already in the LLM's embedding space."""

    stamp_ns: int
    frame_index: int
    embeddings: torch.Tensor  # [N, D], the LLM's hidden size D
    positions: torch.Tensor  # [N] int64, row-major index into the token grid
    grid: tuple[int, int]  # (rows, cols) of the frame's token grid
    novelty: float = 1.0  # how different from earlier frames (0 = nothing new)
    reuse_ratio: float = 0.0  # share of ViT work reused from earlier frames
    model: str = ""  # which model's projector made the embeddings
    frame_id: str = ""  # the camera's coordinate frame, passed on to captions and answers
    camera: str = ""  # which camera of the stream ("" : the only one)

    @property
    def num_tokens(self) -> int:
        return int(self.embeddings.shape[0])


@dataclass
class Answer:
    question: str
    text: str
    stamp_ns: int  # newest frame in context when answered
    latency_ms: float
    evidence_ns: list[int] = field(default_factory=list)  # frames whose KV the answer attended to
    evidence_cameras: list[str] = field(default_factory=list)  # the camera of each of them
    success: bool = True
    error: str = ""
    token_ids: list[int] = field(default_factory=list)  # generated ids, stop token included
    first_logits: "torch.Tensor | None" = None  # [V] logits of the first answer token (tests, diagnostics)
    first_token_ms: float = 0.0  # from the question to the first answer token's logits


@dataclass
class Caption:
    text: str
    start_ns: int  # oldest frame the caption covers
    stamp_ns: int  # newest frame the caption covers
    latency_ms: float


@dataclass
class Alert:
    """An alert rule that started to hold."""

    rule: str
    camera: str  # the camera whose frame was newest when it was checked ("" : the only one)
    stamp_ns: int  # that frame's stamp
    probability: float  # the model's probability of yes (yes against no)
    text: str  # a short line for people: the rule, camera, stream time and probability
    evidence_ns: list[int] = field(default_factory=list)  # frames in the context when checked
    evidence_cameras: list[str] = field(default_factory=list)
