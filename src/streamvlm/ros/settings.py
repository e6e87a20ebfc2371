"""Settings of the ROS nodes themselves (not of the pipeline): plain frozen dataclasses,
declared as parameters without a section prefix (`compressed`, `autostart`...).

Metadata as in `streamvlm.config`: help, range, choices, read_only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_AUTOSTART = {"help": "configure and activate at start; false waits for a lifecycle manager", "read_only": True}
_DIAGNOSTICS = {"help": "seconds between /diagnostics messages", "range": (0.1, 60.0), "read_only": True}
_FRAME_ID = {"help": "frame_id of published captions and answers when no camera frame_id is known"}


@dataclass(frozen=True)
class EncoderSettings:
    compressed: bool = field(default=False, metadata={
        "help": "subscribe image/compressed (sensor_msgs/CompressedImage) instead of image", "read_only": True})
    tokens_dtype: str = field(default="float32", metadata={
        "help": "element type of vision_tokens on the wire (float16 halves the bytes)",
        "choices": ("float32", "float16", "bfloat16")})
    autostart: bool = field(default=True, metadata=_AUTOSTART)
    diagnostics_period_s: float = field(default=1.0, metadata=_DIAGNOSTICS)


@dataclass(frozen=True)
class LlmSettings:
    ask_timeout_s: float = field(default=120.0, metadata={
        "help": "a question not answered within this many seconds gets success=false", "range": (0.1, 3600.0)})
    max_pending_questions: int = field(default=16, metadata={
        "help": "questions waiting beyond this are refused as busy", "range": (1, 10000), "read_only": True})
    max_pending_frames: int = field(default=8, metadata={
        "help": "frames waiting for the language model beyond this push out the oldest", "range": (1, 10000),
        "read_only": True})
    frame_id: str = field(default="camera", metadata=_FRAME_ID)
    autostart: bool = field(default=True, metadata=_AUTOSTART)
    diagnostics_period_s: float = field(default=1.0, metadata=_DIAGNOSTICS)
