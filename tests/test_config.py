import pytest

from streamvlm import config
from conftest import ROOT


LIVE_YAML = ROOT / "config" / "live.yaml"


def test_shipped_parameter_file_holds_the_defaults():
    assert config.load(LIVE_YAML) == config.PipelineConfig()


def test_shipped_node_settings_are_the_nodes_defaults_and_nothing_else():
    # The node settings are plain dataclasses; importing them needs no ROS.
    from streamvlm.ros.settings import EncoderSettings, LlmSettings

    node_only = {k: v for k, v in config.load_params(LIVE_YAML).items() if "." not in k}
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
