"""Configuration: the components' own settings dataclasses, nested into one `PipelineConfig`.

A setting is declared once, with `fields.setting(...)`, on the frozen dataclass of the
component that reads it (`DeltaSettings` in vision/delta_cache.py, `CacheLayout` in
llm/kv_cache.py...). This module only nests them into sections:

    model.*                ModelConfig        (models/base.py)
    vision.fps
    vision.backend.*       BackendSettings    (backends/base.py)
    vision.delta.*         DeltaSettings      (vision/delta_cache.py)
    vision.prune.*         PruneSettings      (vision/pruner.py)
    language.*             answers, captions, question limits (below)
    language.cache.*       CacheLayout        (llm/kv_cache.py)
    language.memory.*      MemorySettings     (llm/memory.py)
    language.sampling.*    Sampling           (llm/decoding.py)
    stream.*               StreamConfig       (timeline.py)

The YAML files under `config/` are ROS 2 parameter files
(`node_name: {ros__parameters: {...}}`); the CLI reads the same files, so a setting means
the same thing in `ros2 launch` and in `streamvlm replay`. ROS parameter names are the
dotted paths (`vision.delta.mode`); names without a section (`compressed`, `autostart`...)
belong to the ROS nodes alone and the CLI skips them. Each field's metadata (help, range,
choices, read_only) becomes the parameter's descriptor; `replace` enforces it everywhere.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from streamvlm.backends.base import BackendSettings
from streamvlm.fields import check, setting
from streamvlm.llm.alerts import AlertSettings
from streamvlm.llm.decoding import Sampling
from streamvlm.llm.kv_cache import CacheLayout
from streamvlm.llm.memory import MemorySettings
from streamvlm.models.base import DEFAULT_MODEL, ModelConfig
from streamvlm.timeline import StreamConfig
from streamvlm.vision.delta_cache import DeltaSettings
from streamvlm.vision.pruner import PruneSettings

__all__ = ["DEFAULT_MODEL", "LEGACY_NAMES", "LanguageConfig", "ModelConfig", "PipelineConfig", "StreamConfig",
           "VisionConfig", "described", "from_flat", "load", "load_params", "replace_checked", "settings_status",
           "to_flat"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VisionConfig:
    """Frame sampling and the vision encoder."""

    fps: float = setting(1.0, "frames per second sampled from the camera (0: every frame)", range=(0.0, 240.0))
    backend: BackendSettings = setting(BackendSettings(), "what runs the ViT")
    delta: DeltaSettings = setting(DeltaSettings(), "the delta-token ViT cache")
    prune: PruneSettings = setting(PruneSettings(), "the visual token pruner")

    def __post_init__(self):
        check(self)


@dataclass(frozen=True)
class LanguageConfig:
    """The language model's context and what it says."""

    max_new_tokens: int = setting(64, "default answer length limit", range=(1, 4096))
    caption_interval_s: float = setting(5.0, "seconds of stream between captions (0: no captions)",
                                        range=(0.0, 86400.0))
    caption_prompt: str = setting("Describe what is happening in one short sentence.",
                                  "question asked to make each caption")
    caption_max_new_tokens: int = setting(24, "caption length limit", range=(1, 1024))
    max_question_chars: int = setting(2000, "longer questions are refused", range=(1, 1_000_000))
    prefill_chunk_tokens: int = setting(512, "longest run of tokens prefilled at once (bounds activation memory)",
                                        range=(1, 1 << 16))
    cache: CacheLayout = setting(CacheLayout(), "the streaming KV cache's layout")
    memory: MemorySettings = setting(MemorySettings(), "long-term memory of evicted frames")
    sampling: Sampling = setting(Sampling(), "how answers are decoded")
    alerts: AlertSettings = setting(AlertSettings(), "natural-language conditions checked as the stream changes")

    def __post_init__(self):
        check(self)


@dataclass(frozen=True)
class PipelineConfig:
    model: ModelConfig = setting(ModelConfig(), "the weights")
    vision: VisionConfig = setting(VisionConfig(), "the vision stage")
    language: LanguageConfig = setting(LanguageConfig(), "the language stage")
    stream: StreamConfig = setting(StreamConfig(), "camera time")

    def replace(self, **sections: Mapping[str, Any]) -> "PipelineConfig":
        """A copy with some settings changed, nested or dotted:
        `cfg.replace(model={"name": "tiny"}, vision={"delta": {"mode": "off"}, "prune.mode": "stc"})`."""
        return replace_checked(self, sections)


# Parameter names before the settings moved into their components' sections (2026-12).
# Parameter files and `-p` overrides that still use them are translated, with a warning.
LEGACY_NAMES = {
    "vision.delta_mode": "vision.delta.mode",
    "vision.delta_threshold": "vision.delta.threshold",
    "vision.delta_drift_bound": "vision.delta.drift_bound",
    "vision.delta_full_above": "vision.delta.full_above",
    "vision.stc_refresh": "vision.delta.refresh",
    "vision.stc_update_ratio": "vision.delta.update_ratio",
    "vision.backend": "vision.backend.name",  # was the backend's name; now the section holding it
    "vision.engines_dir": "vision.backend.engines_dir",
    "vision.torch_compile": "vision.backend.torch_compile",
    "vision.trt_precision": "vision.backend.trt_precision",
    **{f"vision.prune_{name}": f"vision.prune.{name}"
       for name in ("mode", "keep_tokens", "min_tokens", "novelty", "refresh_s")},
    # adaptive's ceiling became the one per-frame budget both prune modes spend (2026-12)
    "vision.prune_max_tokens": "vision.prune.keep_tokens",
    "vision.prune.max_tokens": "vision.prune.keep_tokens",
    "language.kv_budget_tokens": "language.cache.budget_tokens",
    **{f"language.{name}": f"language.cache.{name}"
       for name in ("sink_tokens", "text_sink_tokens", "text_window_tokens", "vision_window_s",
                    "vision_window_frames")},
    **{f"language.{name}": f"language.sampling.{name}"
       for name in ("temperature", "top_p", "repetition_penalty", "seed")},
    **{f"language.memory_{name}": f"language.memory.{name}"
       for name in ("max_frames", "max_mb", "keep_ratio", "top_k", "dtype")},
}


def translate_legacy(params: Mapping[str, Any], warn=log.warning) -> dict[str, Any]:
    """Flat parameters with old names renamed (see LEGACY_NAMES), one warning per old name."""
    out = {}
    for key, value in params.items():
        new = LEGACY_NAMES.get(key)
        if new and new in params:  # given under both names: the new one counts (as on a ROS node)
            warn(f"parameter {key} is now {new}, which is given too; {key} is ignored")
            continue
        if new:
            warn(f"parameter {key} is now {new}; please rename it")
            key = new
        out[key] = value
    return out


def replace_checked(section: Any, values: Mapping[str, Any]) -> Any:
    """`dataclasses.replace` that enforces each field's type, range and choices, and takes
    nested sections as mappings (or as dotted names: `{"delta.mode": "off"}`)."""
    known = {f.name: f for f in dataclasses.fields(section)}
    label = type(section).__name__
    out = {}
    for key, value in _nest(values).items():
        if key not in known:
            raise ValueError(f"unknown setting {label}.{key}; known: {sorted(known)}")
        default = getattr(section, key)
        if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
            out[key] = replace_checked(default, value)
            continue
        # YAML writes 1 for 1.0; accept ints for floats but nothing else that changes type.
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        # Lists of names (a YAML list, a ROS string array) are kept as tuples: settings are frozen.
        if isinstance(default, tuple) and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            value = tuple(value)
        if type(value) is not type(default):
            raise ValueError(f"{label}.{key} must be {type(default).__name__}, got {value!r}")
        out[key] = value
    # Every settings dataclass checks its ranges, choices and cross-field rules in __post_init__.
    return dataclasses.replace(section, **out)


def _nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """{"delta.mode": x, "fps": y} -> {"delta": {"mode": x}, "fps": y}."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if not rest:
            if isinstance(out.get(head), dict) and isinstance(value, Mapping):
                out[head].update(value)
            else:
                out[head] = value
            continue
        inner = out.setdefault(head, {})
        if not isinstance(inner, dict):
            raise ValueError(f"{head} is a value and a section at once ({key})")
        inner[rest] = value
    return out


def from_flat(params: Mapping[str, Any], base: PipelineConfig | None = None) -> PipelineConfig:
    """Build a config from flat ROS-style names (`model.name`, `vision.delta.mode`, ...)."""
    sections = {f.name for f in dataclasses.fields(PipelineConfig)}
    for key in params:
        section, _, name = key.partition(".")
        if not name or section not in sections:
            raise ValueError(f"unknown parameter {key!r}: expected <section>.<name>")
    return replace_checked(base or PipelineConfig(), translate_legacy(params))


def to_flat(cfg: Any) -> dict[str, Any]:
    """Flat ROS-style names and their values."""
    return {name: value for name, (value, _) in described(cfg).items()}


def described(cfg: Any, sections: tuple[str, ...] | None = None) -> dict[str, tuple[Any, Mapping[str, Any]]]:
    """Flat dotted names -> (value, field metadata) of every leaf setting, for declaring parameters.

    `cfg` is any settings dataclass; nested sections are walked (`vision.delta.mode`).
    `sections` keeps only those top-level sections.
    """
    flat = {}
    for f in dataclasses.fields(cfg):
        if sections is not None and f.name not in sections:
            continue
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            flat.update({f"{f.name}.{name}": leaf for name, leaf in described(value).items()})
        else:
            flat[f.name] = (value, f.metadata)
    return flat


def settings_status(cfg: PipelineConfig, sections: tuple[str, ...]) -> dict[str, Any]:
    """The run-time settings in effect, by parameter name, for diagnostics (read-only ones
    are left out: they cannot have changed since the start)."""
    return {f"setting {name}": value for name, (value, meta) in described(cfg, sections).items()
            if not meta.get("read_only")}


def load(path: str | Path, node: str | None = None) -> PipelineConfig:
    """The pipeline settings of a ROS 2 parameter file (node-only settings are skipped)."""
    params = load_params(path, node)
    return from_flat({key: value for key, value in params.items() if "." in key})


def load_params(path: str | Path, node: str | None = None) -> dict[str, Any]:
    """All flat parameters of a ROS 2 parameter file; every node's, merged, unless `node` is given."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} is not a ROS 2 parameter file (expected node names at the top)")
    params: dict[str, Any] = {}
    for name, body in data.items():
        if node is not None and name.strip("/") not in (node, "**"):
            continue
        params.update((body or {}).get("ros__parameters", {}))
    return _flatten(params)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    # ROS parameter files may nest (`vision: {delta: {mode: off}}`) or use dotted names; both mean the same.
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
