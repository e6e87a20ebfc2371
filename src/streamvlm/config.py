"""Configuration: one frozen dataclass per stage, nested in `PipelineConfig`.

The YAML files under `config/` are ROS 2 parameter files
(`node_name: {ros__parameters: {...}}`); the CLI reads the same files, so a setting means
the same thing in `ros2 launch` and in `streamvlm replay`. Parameter names are flat in
ROS (`vision.fps` is the `fps` field of `VisionConfig`); names without a section
(`compressed`, `autostart`...) belong to the ROS nodes alone and the CLI skips them.

Each field's metadata describes it once for every front end: `help`, and optionally
`range` (inclusive bounds), `choices`, and `read_only` (fixes tensor shapes or the loaded
weights, so it cannot change while running). The ROS nodes turn it into
ParameterDescriptors; `replace` enforces it everywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

DEFAULT_MODEL = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"


@dataclass(frozen=True)
class ModelConfig:
    """Which weights to load and how to run them."""

    name: str = field(default=DEFAULT_MODEL, metadata={
        "help": "HF model id, local directory, or 'tiny'", "read_only": True})
    dtype: str = field(default="float32", metadata={
        "help": "weights and activations", "choices": ("float32", "bfloat16", "float16"), "read_only": True})
    device: str = field(default="cpu", metadata={"help": "torch device: cpu, cuda, cuda:1...", "read_only": True})
    fallback_to_tiny: bool = field(default=True, metadata={
        "help": "use the tiny random model when `name` cannot be loaded", "read_only": True})


@dataclass(frozen=True)
class VisionConfig:
    """Frame sampling and the vision encoder."""

    fps: float = field(default=1.0, metadata={
        "help": "frames per second sampled from the camera (0: every frame)", "range": (0.0, 240.0)})
    # Delta-token ViT cache (see vision/delta_cache.py): "threshold" is ours, "stc" is STC-Cacher.
    delta_mode: str = field(default="threshold", metadata={
        "help": "reuse ViT work on unchanged patches: threshold, stc, or off", "choices": ("threshold", "stc", "off")})
    delta_threshold: float = field(default=0.03, metadata={
        "help": "threshold mode: a patch is recomputed when a quadrant's mean change passes this (pixels 0..1)",
        "range": (0.0, 1.0)})
    delta_drift_bound: float = field(default=0.3, metadata={
        "help": "threshold mode: full ViT pass once this share of patches changed since the last one (0: exact)",
        "range": (0.0, 1.0)})
    delta_full_above: float = field(default=0.5, metadata={
        "help": "threshold mode: full ViT pass when more than this share of patches changed", "range": (0.0, 1.0)})
    stc_refresh: int = field(default=2, metadata={"help": "stc mode: full pass every N frames", "range": (1, 1000)})
    stc_update_ratio: float = field(default=0.25, metadata={
        "help": "stc mode: share of tokens recomputed per layer between full passes", "range": (0.01, 1.0)})
    # Vision backend (see backends/): the ViT's full-frame and delta graphs.
    backend: str = field(default="torch", metadata={
        "help": "what runs the ViT: torch, onnxruntime or tensorrt (the last two need `streamvlm export`)",
        "choices": ("torch", "onnxruntime", "tensorrt"), "read_only": True})
    engines_dir: str = field(default="engines", metadata={
        "help": "where `streamvlm export` put the ONNX graphs and TensorRT engines", "read_only": True})
    torch_compile: bool = field(default=False, metadata={
        "help": "torch backend: compile the graphs with torch.compile (slow first frames)", "read_only": True})
    trt_precision: str = field(default="fp16", metadata={
        "help": "tensorrt backend: which engine to load", "choices": ("fp16", "int8", "fp32"), "read_only": True})
    # Visual token pruner (see vision/pruner.py): "adaptive" is ours, "stc" is STC-Pruner.
    prune_mode: str = field(default="adaptive", metadata={
        "help": "drop redundant visual tokens before the LLM: adaptive, stc, or off",
        "choices": ("adaptive", "stc", "off")})
    prune_keep_tokens: int = field(default=60, metadata={
        "help": "stc mode: tokens kept per frame (STC: 60 of 196)", "range": (1, 1 << 20)})
    prune_min_tokens: int = field(default=4, metadata={
        "help": "adaptive mode: fewest tokens a frame sends", "range": (1, 1 << 20)})
    prune_max_tokens: int = field(default=98, metadata={
        "help": "adaptive mode: most tokens a frame sends", "range": (1, 1 << 20)})
    prune_novelty: float = field(default=0.02, metadata={
        "help": "adaptive mode: a token is sent when it moved this far (cosine distance) from the last one sent "
                "from its grid cell", "range": (0.0, 2.0)})
    prune_refresh_s: float = field(default=12.0, metadata={
        "help": "adaptive mode: every grid cell is sent again at least this often, so the LLM's vision window "
                "keeps a whole view (keep it below language.vision_window_s; 0: never)", "range": (0.0, 86400.0)})


@dataclass(frozen=True)
class LanguageConfig:
    """The language model's context and what it says."""

    max_new_tokens: int = field(default=64, metadata={"help": "default answer length limit", "range": (1, 4096)})
    caption_interval_s: float = field(default=5.0, metadata={
        "help": "seconds of stream between captions (0: no captions)", "range": (0.0, 86400.0)})
    caption_prompt: str = field(
        default="Describe what is happening in one short sentence.",
        metadata={"help": "question asked to make each caption"},
    )
    caption_max_new_tokens: int = field(default=24, metadata={"help": "caption length limit", "range": (1, 1024)})
    max_question_chars: int = field(default=2000, metadata={
        "help": "longer questions are refused", "range": (1, 1_000_000)})
    # Streaming KV cache (StreamingVLM's layout; defaults after its 512 + 512 text tokens, 16 s of vision).
    kv_budget_tokens: int = field(default=8192, metadata={
        "help": "KV cache size in tokens, preallocated (0: full attention, grows without bound; the reference)",
        "range": (0, 1 << 24), "read_only": True})
    sink_tokens: int = field(default=4, metadata={
        "help": "first tokens of the stream kept forever (attention sinks)", "range": (0, 1 << 20)})
    text_sink_tokens: int = field(default=512, metadata={
        "help": "first text tokens after the sinks kept forever (system prompt, first turns)", "range": (0, 1 << 20)})
    text_window_tokens: int = field(default=512, metadata={
        "help": "most recent text tokens kept", "range": (0, 1 << 20)})
    vision_window_s: float = field(default=16.0, metadata={
        "help": "frames younger than this are kept, budget allowing (0: no time limit)", "range": (0.0, 86400.0)})
    vision_window_frames: int = field(default=0, metadata={
        "help": "at most this many frames are kept (0: no count limit)", "range": (0, 1 << 20)})
    prefill_chunk_tokens: int = field(default=512, metadata={
        "help": "longest run of tokens prefilled at once (bounds activation memory)", "range": (1, 1 << 16)})
    temperature: float = field(default=0.0, metadata={
        "help": "sampling temperature (0: greedy)", "range": (0.0, 100.0)})
    top_p: float = field(default=1.0, metadata={
        "help": "nucleus sampling: keep the most likely tokens up to this probability", "range": (0.0, 1.0)})
    repetition_penalty: float = field(default=1.0, metadata={
        "help": "divides the logits of tokens already in the question or answer (1: off)", "range": (0.01, 100.0)})
    seed: int = field(default=0, metadata={"help": "sampling seed (answers are reproducible)", "range": (0, 2**31 - 1)})
    # Long-term memory (see llm/memory.py): frames that leave the cache, compressed, retrieved per question.
    memory_max_frames: int = field(default=0, metadata={
        "help": "long-term memory holds at most this many frames, dropping the oldest (0: no count limit)",
        "range": (0, 1 << 30)})
    memory_max_mb: float = field(default=512.0, metadata={
        "help": "long-term memory size limit in MiB, dropping the oldest frames (0 with memory_max_frames 0: "
                "memory off)", "range": (0.0, 1 << 20)})
    memory_keep_ratio: float = field(default=0.25, metadata={
        "help": "share of an evicted frame's tokens kept in memory, the most attended (1: no compression)",
        "range": (0.001, 1.0)})
    memory_top_k: int = field(default=16, metadata={
        "help": "frames brought back from memory for each question (0: no retrieval)", "range": (0, 4096)})
    memory_dtype: str = field(default="int8", metadata={
        "help": "how memory stores keys and values", "choices": ("int8", "float16", "bfloat16", "float32")})


@dataclass(frozen=True)
class StreamConfig:
    """What a stage does when camera time jumps (see timeline.py)."""

    on_time_jump: str = field(default="reset", metadata={
        "help": "when stamps jump back or a long gap comes: reset (start a new stream: clear the context and "
                "memory) or continue (keep them; stamps after a jump back are shifted to follow on)",
        "choices": ("reset", "continue")})
    max_gap_s: float = field(default=120.0, metadata={
        "help": "a forward gap between frames longer than this is a time jump (0: gaps never are)",
        "range": (0.0, 1e9)})
    max_reorder_s: float = field(default=1.0, metadata={
        "help": "a frame at most this much older than the newest is late and dropped; older still, "
                "the clock jumped back (a looped bag, a reset clock)", "range": (0.0, 1e9)})


@dataclass(frozen=True)
class PipelineConfig:
    model: ModelConfig = ModelConfig()
    vision: VisionConfig = VisionConfig()
    language: LanguageConfig = LanguageConfig()
    stream: StreamConfig = StreamConfig()

    def replace(self, **sections: Mapping[str, Any]) -> "PipelineConfig":
        """A copy with some fields of some sections changed: `cfg.replace(model={"name": "tiny"})`."""
        changed = {}
        for name, values in sections.items():
            section = getattr(self, name)
            changed[name] = replace_checked(section, values)
        return dataclasses.replace(self, **changed)


def replace_checked(section: Any, values: Mapping[str, Any]) -> Any:
    """`dataclasses.replace` that enforces each field's type, range and choices."""
    known = {f.name: f for f in dataclasses.fields(section)}
    out = {}
    label = type(section).__name__
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"unknown setting {label}.{key}; known: {sorted(known)}")
        default = getattr(section, key)
        # YAML writes 1 for 1.0; accept ints for floats but nothing else that changes type.
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default):
            raise ValueError(f"{label}.{key} must be {type(default).__name__}, got {value!r}")
        meta = known[key].metadata
        if "range" in meta and not meta["range"][0] <= value <= meta["range"][1]:
            raise ValueError(f"{label}.{key} must be in [{meta['range'][0]}, {meta['range'][1]}], got {value!r}")
        if "choices" in meta and value not in meta["choices"]:
            raise ValueError(f"{label}.{key} must be one of {', '.join(meta['choices'])}; got {value!r}")
        out[key] = value
    return dataclasses.replace(section, **out)


def from_flat(params: Mapping[str, Any], base: PipelineConfig | None = None) -> PipelineConfig:
    """Build a config from flat ROS-style names (`model.name`, `vision.fps`, ...)."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        section, _, name = key.partition(".")
        if not name or section not in {f.name for f in dataclasses.fields(PipelineConfig)}:
            raise ValueError(f"unknown parameter {key!r}: expected <section>.<name>")
        sections.setdefault(section, {})[name] = value
    return (base or PipelineConfig()).replace(**sections)


def to_flat(cfg: PipelineConfig) -> dict[str, Any]:
    """Flat ROS-style names and their values."""
    return {name: value for name, (value, _) in described(cfg).items()}


def described(cfg: Any, sections: tuple[str, ...] | None = None) -> dict[str, tuple[Any, Mapping[str, Any]]]:
    """Flat names -> (value, field metadata), for declaring parameters.

    `cfg` is a PipelineConfig (names `section.field`, optionally only some `sections`) or
    any other frozen dataclass (names are its fields).
    """
    if not isinstance(cfg, PipelineConfig):
        return {f.name: (getattr(cfg, f.name), f.metadata) for f in dataclasses.fields(cfg)}
    flat = {}
    for section in dataclasses.fields(cfg):
        if sections is not None and section.name not in sections:
            continue
        for f in dataclasses.fields(getattr(cfg, section.name)):
            flat[f"{section.name}.{f.name}"] = (getattr(getattr(cfg, section.name), f.name), f.metadata)
    return flat


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
    # ROS parameter files may nest (`vision: {fps: 2}`) or use dotted names; both mean the same.
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
