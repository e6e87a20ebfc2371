"""Settings of the ROS nodes themselves (not of the pipeline): frozen dataclasses declared,
like the components' settings, with `fields.setting`, and declared as parameters without
a section prefix (`compressed`, `autostart`...)."""

from __future__ import annotations

from dataclasses import dataclass

from streamvlm.cameras import check_cameras
from streamvlm.fields import check, setting

_AUTOSTART = "configure and activate at start; false waits for a lifecycle manager"
_DIAGNOSTICS = "seconds between /diagnostics messages"


@dataclass(frozen=True)
class EncoderSettings:
    cameras: tuple = setting((), "camera names, each subscribed on NAME/image (or NAME/image/compressed), its frames "
                             "named in the LLM's context and in answers' evidence; [] : one camera on image",
                             read_only=True)
    compressed: bool = setting(False, "subscribe image/compressed (sensor_msgs/CompressedImage) instead of image",
                               read_only=True)
    tokens_dtype: str = setting("float32", "element type of vision_tokens on the wire (float16 halves the bytes)",
                                choices=("float32", "float16", "bfloat16"))
    debug_image: bool = setting(False, "publish debug_image (sensor_msgs/Image, rgb8): each processed frame with the "
                                "patches the ViT recomputed (red) and the tokens sent to the LLM (green) drawn on it")
    autostart: bool = setting(True, _AUTOSTART, read_only=True)
    diagnostics_period_s: float = setting(1.0, _DIAGNOSTICS, range=(0.1, 60.0), read_only=True)

    def __post_init__(self):
        check(self)
        check_cameras(list(self.cameras))


@dataclass(frozen=True)
class LlmSettings:
    ask_timeout_s: float = setting(120.0, "a question not answered within this many seconds gets success=false",
                                   range=(0.1, 3600.0))
    max_pending_questions: int = setting(16, "questions waiting beyond this are refused as busy", range=(1, 10000),
                                         read_only=True)
    max_pending_frames: int = setting(8, "frames waiting for the language model beyond this push out the oldest",
                                      range=(1, 10000), read_only=True)
    frame_id: str = setting("camera", "frame_id of published captions and answers when no camera frame_id is known")
    autostart: bool = setting(True, _AUTOSTART, read_only=True)
    diagnostics_period_s: float = setting(1.0, _DIAGNOSTICS, range=(0.1, 60.0), read_only=True)

    def __post_init__(self):
        check(self)
