"""Several cameras in one stream: the names they go by, and how many one stream takes.

A camera's name is written into the LLM's context before each of its frames (" front 12s"),
names the camera in answers' evidence, and names its topics, so it is kept to a short
identifier. "" is the single unnamed camera of a one-camera stream: no name in the context.
"""

from __future__ import annotations

import re

MAX_CAMERAS = 16  # per stream: each keeps a vision window and a delta cache of its own
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")


def camera_error(name: str) -> str:
    """Why `name` cannot name a camera; "" when it can."""
    if name == "":
        return ""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return (f"camera name {name!r} must be a letter then up to 31 letters, digits or underscores "
                "(it names topics and is written into the model's context)")
    return ""


def check_cameras(names: list[str]) -> list[str]:
    """A camera list as a setting gives it: [] for one unnamed camera; else distinct valid names."""
    names = list(names)
    if names in ([], [""]):
        return []
    for name in names:
        error = camera_error(name) or ("" if name else "an empty camera name among several")
        if error:
            raise ValueError(error)
    if len(set(names)) != len(names):
        raise ValueError(f"camera names repeat: {names}")
    if len(names) > MAX_CAMERAS:
        raise ValueError(f"{len(names)} cameras; one stream takes at most {MAX_CAMERAS}")
    return names
