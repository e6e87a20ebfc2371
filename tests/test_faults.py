"""Faults: a node process killed and restarted, a model or engine that cannot load, and
run-time parameter changes that must be refused whole. The other node keeps working, and
a node that cannot configure stays up saying why."""

from __future__ import annotations

import shutil
import signal

import pytest

from conftest import ROOT
from tally import TALLY

pytestmark = [pytest.mark.ros, pytest.mark.reliability]
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (make setup)")
pytest.importorskip("streamvlm_msgs.srv", reason="streamvlm_msgs is not built (make setup)")

from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from ros_probe import Probe, Running, start_node, stop_node, wait_for  # noqa: E402
from streamvlm.export.onnx_export import export_onnx  # noqa: E402
from streamvlm.models.tiny import ensure_tiny  # noqa: E402
from streamvlm.ros.encoder_node import EncoderNode  # noqa: E402
from streamvlm.ros.llm_node import LlmNode  # noqa: E402
from test_load import Camera  # noqa: E402

ERROR = b"\x02"
LLM, ENCODER = "streamvlm: /llm_node", "streamvlm: /encoder_node"


def _fault(kind: str, outcome: str) -> None:
    TALLY.add("faults injected", f"{kind}: {outcome}")


# ---- configure-time faults: the node stays up, unconfigured, and says why

@pytest.fixture(scope="module")
def corrupt_engines(tiny_model, tmp_path_factory):
    """ONNX graphs exported for the tiny model, then overwritten with garbage."""
    engines = tmp_path_factory.mktemp("corrupt-engines")
    export_onnx(tiny_model.tower, "tiny", engines, 384, say=lambda _: None)
    graphs = list(engines.rglob("*.onnx"))
    assert graphs
    for graph in graphs:
        graph.write_bytes(b"not a protobuf" * 10)
    return engines


def _corrupt_config(tmp_path):
    folder = tmp_path / "corrupt-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llava_onevision", "text_config": ')  # cut short
    return str(folder)


def _corrupt_weights(tmp_path):
    folder = tmp_path / "corrupt-model"
    shutil.copytree(ensure_tiny(), folder)
    for weights in folder.glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:1000])  # a download cut short
    return str(folder)


CONFIGURE_FAULTS = {
    "corrupt model config": (LlmNode, lambda tmp, engines: {"model.name": _corrupt_config(tmp)},
                             "cannot read"),
    "corrupt model weights": (LlmNode, lambda tmp, engines: {"model.name": _corrupt_weights(tmp)},
                              "corrupt-model failed"),
    "missing engine": (EncoderNode, lambda tmp, engines: {"vision.backend.name": "onnxruntime",
                                                          "vision.backend.engines_dir": str(tmp / "none")},
                       "streamvlm export onnx"),
    "corrupt engine": (EncoderNode, lambda tmp, engines: {"vision.backend.name": "onnxruntime",
                                                          "vision.backend.engines_dir": str(engines)}, "onnx"),
}


@pytest.mark.parametrize("fault", CONFIGURE_FAULTS)
def test_a_model_or_engine_that_cannot_load_leaves_the_node_up_and_saying_why(request, tiny_model, tmp_path,
                                                                             corrupt_engines, fault):
    node_type, overrides, says = CONFIGURE_FAULTS[fault]
    probe = Probe()
    request.addfinalizer(probe.close)
    running = Running(lambda **kw: [node_type(**kw)], {"model.name": "tiny", "model.fallback_to_tiny": False,
                                                        **overrides(tmp_path, corrupt_engines)})
    request.addfinalizer(running.close)
    node = running.nodes[0]
    assert running.started == [False] and node.state_label == "unconfigured"
    assert says in node.configure_error, node.configure_error
    name = LLM if node_type is LlmNode else ENCODER
    wait_for(lambda: probe.levels.get(name), 30, "diagnostics from the unconfigured node")
    level, message = probe.levels[name]
    assert level == ERROR and says in message
    if node_type is LlmNode:
        response = probe.ask("Is anyone there?")
        assert not response.success and "unconfigured" in response.error and says in response.error
    _fault(fault, "configure refused with a reason, node up")


# ---- run-time parameter changes: refused whole, nothing changes

def test_an_invalid_run_time_change_is_refused_and_changes_nothing(request, tiny_model):
    running = Running(lambda **kw: [LlmNode(**kw), EncoderNode(**kw)],
                      {"model.name": "tiny", "vision.fps": 2.0, "language.max_new_tokens": 8})
    request.addfinalizer(running.close)
    llm, encoder = running.nodes
    sampler, layout = encoder.worker.stage.sampler, llm.worker.stage.engine.cache.policy.layout
    cases = [
        (llm, [Parameter("language.max_new_tokens", value=9), Parameter("language.cache.text_sink_tokens", value=9000)],
         "must leave room"),  # the sinks would fill the whole cache
        (llm, [Parameter("language.cache.budget_tokens", value=1024)], "read-only"),
        (llm, [Parameter("stream.on_time_jump", value="sometimes")], "one of reset"),
        (encoder, [Parameter("vision.fps", value=5.0), Parameter("vision.prune.min_tokens", value=200)],
         "must not exceed keep_tokens"),
        (encoder, [Parameter("vision.fps", value=float("nan"))], ""),
    ]
    for node, params, reason in cases:
        before = (node.cfg, node.settings)
        result = node.set_parameters_atomically(params)
        assert not result.successful and reason in result.reason, result.reason
        assert (node.cfg, node.settings) == before
        assert all(node.get_parameter(p.name).value != p.value for p in params)
        _fault("invalid parameter change", "refused, nothing changed")
    assert encoder.worker.stage.sampler is sampler and encoder.cfg.vision.fps == 2.0
    assert llm.worker.stage.engine.cache.policy.layout is layout and llm.cfg.language.max_new_tokens == 8
    assert llm.set_parameters([Parameter("language.max_new_tokens", value=9)])[0].successful  # a good one applies


# ---- a node process killed (SIGKILL, no clean-up) and restarted

NODE_ARGS = ["--ros-args", "--params-file", str(ROOT / "config" / "live.yaml"), "-p", "model.name:=tiny",
             "-p", "vision.fps:=0.0", "-p", "language.caption_interval_s:=0.0", "-p", "language.max_new_tokens:=4"]


def _figure(probe, node: str, key: str) -> float:
    value = probe.figure(node, key)
    return 0.0 if value != value else value  # nan until the first diagnostics


def _grows(probe, node: str, key: str, what: str, by: int = 3, timeout_s: float = 90):
    start = _figure(probe, node, key)
    wait_for(lambda: _figure(probe, node, key) >= start + by, timeout_s, what)


def test_killed_nodes_restart_and_the_other_one_keeps_working(tiny_model, tmp_path, frames):
    logs = tmp_path / "logs"
    logs.mkdir()
    probe = Probe()
    publisher = probe.publisher(Image, "image")
    camera = Camera(publisher, frames[0], hz=5.0)
    llm = start_node("llm_node", NODE_ARGS, logs)
    encoder = start_node("encoder_node", NODE_ARGS, logs)
    try:
        wait_for(lambda: probe.levels.get(LLM) and probe.levels.get(ENCODER), 90, "diagnostics from both nodes")
        camera.start()
        _grows(probe, "llm_node", "frames ingested", "frames reaching the language model")
        assert probe.ask("What is there?").success

        encoder.send_signal(signal.SIGKILL)
        encoder.wait(30)
        _fault("encoder process killed", "LLM kept answering")
        newest = []
        for _ in range(3):  # from what it holds, while no tokens come
            response = probe.ask("What did you see?")
            assert response.success and response.evidence
            newest.append(response.evidence[-1].sec * 10**9 + response.evidence[-1].nanosec)
        assert newest[1] == newest[2]  # nothing new arrives (the first may still see a frame in flight)
        encoder = start_node("encoder_node", NODE_ARGS, logs)
        _grows(probe, "llm_node", "frames ingested", "ingestion to resume after the encoder restarted")
        _fault("encoder process restarted", "ingestion resumed")

        llm.send_signal(signal.SIGKILL)
        llm.wait(30)
        probe.diagnostics.pop(LLM, None)  # the restarted node counts from zero
        _fault("LLM process killed", "encoder kept encoding")
        _grows(probe, "encoder_node", "frames processed", "the encoder to go on without the language model")
        llm = start_node("llm_node", NODE_ARGS, logs)
        wait_for(lambda: probe.ask_client.wait_for_service(timeout_sec=1), 90, "the restarted ask service")
        _grows(probe, "llm_node", "frames ingested", "the restarted language model to ingest")
        response = probe.ask("What is there now?")
        assert response.success and response.evidence
        _fault("LLM process restarted", "ingesting and answering")
    finally:
        camera.stop()
        probe.close()
        codes = [stop_node(p) for p in (encoder, llm)]
        log_text = "\n".join(f.read_text() for f in sorted(logs.glob("*.log")))
    assert codes == [0, 0], f"nodes exited with {codes}:\n{log_text}"


def test_an_unconfigured_node_is_not_a_crash(tmp_path):
    """The same, asserted from the outside: a node whose model is missing keeps its process,
    answers `ask` with the reason, and exits cleanly when stopped."""
    logs = tmp_path / "logs"
    logs.mkdir()
    args = [*NODE_ARGS, "-p", f"model.name:={tmp_path / 'missing'}", "-p", "model.fallback_to_tiny:=false"]
    llm = start_node("llm_node", args, logs)
    probe = Probe()
    try:
        wait_for(lambda: probe.levels.get(LLM), 90, "diagnostics")
        response = probe.ask("Anyone?")
        assert not response.success and "does not exist" in response.error
        assert llm.poll() is None
    finally:
        probe.close()
        code = stop_node(llm)
    assert code == 0, (logs / "llm_node.log").read_text()
    _fault("missing model (process)", "configure refused with a reason, node up")



def test_a_stop_that_races_the_executor_is_a_clean_exit(monkeypatch):
    """SIGTERM's handler shuts the context down while the executor builds its wait set; rclpy
    then raises "context is not valid" (RCLError), not ExternalShutdownException. CI saw a
    node exit 1 so. After a shutdown that is a clean stop; with the context still up, the
    same error is a real one and propagates."""
    from rclpy.impl.implementation_singleton import rclpy_implementation

    from streamvlm.ros import spin

    class RacingExecutor:
        shut_down_first = True

        def __init__(self, num_threads):
            pass

        def spin(self):
            if RacingExecutor.shut_down_first:
                rclpy.shutdown()
            raise rclpy_implementation.RCLError("failed to initialize wait set: the given context is not valid")

    monkeypatch.setattr(spin, "MultiThreadedExecutor", RacingExecutor)
    assert spin.run(lambda: []) == 0
    RacingExecutor.shut_down_first = False
    with pytest.raises(rclpy_implementation.RCLError):
        spin.run(lambda: [])
    assert not rclpy.ok()  # the run's own shutdown, on the way out
