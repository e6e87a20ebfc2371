import pytest

from streamvlm import config
from conftest import ROOT


def test_shipped_parameter_file_holds_the_defaults():
    assert config.load(ROOT / "config" / "streamvlm.yaml") == config.PipelineConfig()


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


def test_ints_are_accepted_for_floats(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("node:\n  ros__parameters:\n    vision.fps: 2\n")
    assert config.load(path).vision.fps == 2.0
