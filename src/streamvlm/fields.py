"""How a setting is declared: once, on the settings dataclass of the component that reads it.

Each component (delta cache, pruner, KV cache layout, memory, sampling, backend...) owns a
frozen dataclass of its settings; `streamvlm.config` nests those dataclasses as the
sections of the pipeline config, the ROS nodes turn each field into a parameter with a
descriptor, and the CLI and benches read choices and defaults from the same fields. So a
setting is written in one place: `setting(...)` on its component's dataclass.

Metadata keys: `help`, and optionally `range` (inclusive bounds), `choices`, and
`read_only` (fixes tensor shapes or loaded weights, so it cannot change while running).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence


def setting(default: Any, help: str, *, range: tuple[float, float] | None = None,
            choices: Sequence[str] | None = None, read_only: bool = False) -> Any:
    """A dataclass field carrying its own description, bounds and choices."""
    meta: dict[str, Any] = {"help": help}
    if range is not None:
        meta["range"] = range
    if choices is not None:
        meta["choices"] = tuple(choices)
    if read_only:
        meta["read_only"] = True
    if dataclasses.is_dataclass(default):  # a nested section: one shared frozen default is safe
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def choices(settings_type: type, name: str) -> tuple[str, ...]:
    """The allowed values of a field, for argparse and benches."""
    return _field(settings_type, name).metadata["choices"]


def check(settings: Any) -> None:
    """Raise ValueError when a field is outside its range or choices (called by each
    settings dataclass's __post_init__, so a bad value is refused however it was built)."""
    label = type(settings).__name__
    for f in dataclasses.fields(settings):
        value, meta = getattr(settings, f.name), f.metadata
        if "range" in meta and not meta["range"][0] <= value <= meta["range"][1]:
            raise ValueError(f"{label}.{f.name} must be in [{meta['range'][0]}, {meta['range'][1]}], got {value!r}")
        if "choices" in meta and value not in meta["choices"]:
            raise ValueError(f"{label}.{f.name} must be one of {', '.join(meta['choices'])}; got {value!r}")


def _field(settings_type: type, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(settings_type):
        if f.name == name:
            return f
    raise KeyError(f"{settings_type.__name__} has no setting {name!r}")
