"""The two nodes run the other model families too: `model.name` set to a Qwen2-VL tiny model
(M-RoPE: each token's grid position crosses the process boundary in VisionTokens) and to
SmolVLM's, over real DDS, answering from the sample bag."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE_BAG

pytestmark = pytest.mark.ros
pytest.importorskip("rclpy", reason="rclpy is not installed (make setup)")
pytest.importorskip("streamvlm_msgs.srv", reason="streamvlm_msgs is not built (make setup)")

from ros_probe import Probe, start_node, stop_node, wait_for  # noqa: E402  (needs rclpy)

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("model", ["tiny-qwen2vl", "tiny-smolvlm"])
def test_nodes_answer_with_the_family(model, tmp_path):
    from streamvlm.models import resolve

    resolve(model)  # built once here, not by both nodes at once
    args = ["--ros-args", "--params-file", str(ROOT / "config" / "live.yaml"), "-p", f"model.name:={model}",
            "-p", "compressed:=true", "-p", "vision.fps:=2.0", "-p", "language.caption_interval_s:=0.0",
            "-p", "language.max_new_tokens:=4", "-r", "image/compressed:=/camera/image/compressed"]
    processes = [start_node("llm_node", args, tmp_path), start_node("encoder_node", args, tmp_path)]
    probe = Probe()
    try:
        wait_for(lambda: probe.levels.get("streamvlm: /llm_node") and probe.levels.get("streamvlm: /encoder_node"),
                 90, "diagnostics from both nodes")
        player = subprocess.run([str(BIN / "streamvlm"), "play", str(SAMPLE_BAG), "--rate", "4", "--wait", "30"],
                                capture_output=True, text=True, timeout=180)
        assert player.returncode == 0, player.stdout + player.stderr
        wait_for(lambda: probe.figure("llm_node", "frames ingested") >= 3, 60, "frames ingested by llm_node")
        answer = probe.ask("What is happening?")
        assert answer.success and answer.evidence, answer
    finally:
        probe.close()
        codes = [stop_node(p) for p in processes]
    assert codes == [0, 0], "\n".join(f.read_text() for f in sorted(tmp_path.glob("*.log")))
