import pytest

from streamvlm import config
from conftest import ROOT


LIVE_YAML = ROOT / "config" / "live.yaml"


def test_shipped_parameter_file_holds_the_defaults():
    assert config.load(LIVE_YAML) == config.PipelineConfig()


def test_shipped_node_settings_are_the_nodes_defaults_and_nothing_else():
    # The node settings are plain dataclasses; importing them needs no ROS.
    from streamvlm.ros.settings import EncoderSettings, LlmSettings

    node_only = {k: tuple(v) if isinstance(v, list) else v  # YAML lists are tuples in frozen settings
                 for k, v in config.load_params(LIVE_YAML).items() if "." not in k}
    defaults = {**config.described(EncoderSettings()), **config.described(LlmSettings())}
    assert node_only == {name: value for name, (value, _) in defaults.items()}


def test_ranges_and_choices_are_enforced():
    with pytest.raises(ValueError, match=r"VisionConfig.fps must be in \[0.0, 240.0\]"):
        config.PipelineConfig().replace(vision={"fps": -1.0})
    with pytest.raises(ValueError, match="one of float32, bfloat16, float16"):
        config.PipelineConfig().replace(model={"dtype": "int4"})


def test_flat_names_round_trip():
    cfg = config.PipelineConfig().replace(vision={"fps": 2.0}, model={"name": "tiny"})
    assert config.from_flat(config.to_flat(cfg)) == cfg


def test_unknown_and_mistyped_settings_are_refused():
    with pytest.raises(ValueError, match="unknown setting"):
        config.PipelineConfig().replace(vision={"fsp": 2.0})
    with pytest.raises(ValueError, match="must be float"):
        config.PipelineConfig().replace(vision={"fps": "fast"})
    with pytest.raises(ValueError, match="unknown parameter"):
        config.from_flat({"fps": 2.0})
    with pytest.raises(ValueError, match="unknown parameter"):
        config.from_flat({"camera.fps": 2.0})


def test_ints_are_accepted_for_floats(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("node:\n  ros__parameters:\n    vision.fps: 2\n")
    assert config.load(path).vision.fps == 2.0


def test_each_section_is_its_components_own_settings_object():
    from streamvlm.backends.base import BackendSettings
    from streamvlm.llm.decoding import Sampling
    from streamvlm.llm.kv_cache import CacheLayout
    from streamvlm.llm.memory import MemorySettings
    from streamvlm.vision.delta_cache import DeltaSettings
    from streamvlm.vision.pruner import PruneSettings

    cfg = config.PipelineConfig()
    sections = {cfg.vision.backend: BackendSettings, cfg.vision.delta: DeltaSettings, cfg.vision.prune: PruneSettings,
                cfg.language.cache: CacheLayout, cfg.language.memory: MemorySettings,
                cfg.language.sampling: Sampling}
    for section, kind in sections.items():
        assert type(section) is kind and section == kind()  # one default, written once
    # Every leaf is a parameter with a description; choices and bounds sit on the field.
    described = config.described(cfg)
    assert described["vision.delta.mode"][1]["choices"] == ("threshold", "stc", "off")
    assert described["language.cache.budget_tokens"][1]["read_only"]
    assert all(meta.get("help") for _, meta in described.values())


def test_nested_and_dotted_changes_mean_the_same():
    base = config.PipelineConfig()
    nested = base.replace(vision={"delta": {"mode": "stc"}, "prune": {"min_tokens": 8}})
    dotted = base.replace(vision={"delta.mode": "stc", "prune.min_tokens": 8})
    flat = config.from_flat({"vision.delta.mode": "stc", "vision.prune.min_tokens": 8})
    assert nested == dotted == flat and nested.vision.delta.threshold == base.vision.delta.threshold


def test_a_component_refuses_a_bad_value_however_it_is_built():
    from streamvlm.vision.pruner import PruneSettings

    with pytest.raises(ValueError, match=r"PruneSettings.novelty must be in"):
        PruneSettings(novelty=float("nan"))
    with pytest.raises(ValueError, match="min_tokens"):
        config.PipelineConfig().replace(vision={"prune.min_tokens": 99})  # above keep_tokens 98


def test_old_flat_names_are_translated_with_a_warning(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("/**:\n  ros__parameters:\n    vision:\n      backend: onnxruntime\n      delta_mode: stc\n"
                    "    language:\n      kv_budget_tokens: 0\n      memory_top_k: 3\n")
    warnings = []
    cfg = config.from_flat(config.translate_legacy(config.load_params(path), warnings.append))
    assert cfg.vision.backend.name == "onnxruntime" and cfg.vision.delta.mode == "stc"
    assert cfg.language.cache.budget_tokens == 0 and cfg.language.memory.top_k == 3
    assert len(warnings) == 4 and "vision.delta_mode is now vision.delta.mode" in warnings[1]
    assert config.load(path) == cfg
    assert set(config.LEGACY_NAMES.values()) <= set(config.described(config.PipelineConfig()))


def test_the_adaptive_pruners_old_ceiling_is_the_one_budget_unless_the_budget_is_given():
    warnings = []
    alone = config.translate_legacy({"vision.prune.max_tokens": 60}, warnings.append)
    assert config.from_flat(alone).vision.prune.keep_tokens == 60 and "please rename" in warnings[0]
    both = config.translate_legacy({"vision.prune.keep_tokens": 40, "vision.prune.max_tokens": 98}, warnings.append)
    assert config.from_flat(both).vision.prune.keep_tokens == 40 and "is ignored" in warnings[1]


def test_settings_in_diagnostics_leave_out_what_cannot_change():
    status = config.settings_status(config.PipelineConfig(), ("vision", "stream"))
    assert status["setting vision.delta.mode"] == "threshold" and "setting stream.max_gap_s" in status
    assert not any("backend" in key or "language" in key for key in status)
