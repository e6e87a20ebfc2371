"""A test-side ROS participant: calls `ask`, records captions, answers and diagnostics, and
publishes camera images. Spins in its own thread on its own context; tests wait on
conditions with a deadline, never on sleeps."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from streamvlm_msgs.msg import Alert, Answer, Caption
from streamvlm_msgs.srv import Ask, EditAlerts

RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE)


def wait_for(condition: Callable[[], object], timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def rgb_image(frame, sec: int, nanosec: int = 0) -> Image:
    """A raw camera message of an HxWx3 uint8 RGB frame, stamped sec.nanosec."""
    msg = Image(height=frame.shape[0], width=frame.shape[1], encoding="rgb8", step=frame.shape[1] * 3,
                data=frame.tobytes())
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    return msg


def publish_until(publisher, make_msg: Callable[[int], object], condition: Callable[[], object],
                  timeout_s: float, what: str, period_s: float = 1.0):
    """Publish `make_msg(attempt)` every `period_s` until `condition` holds.

    A camera subscription is best effort: a message sent just as the subscriber matches
    the publisher may be lost, so the first one is retried rather than waited for.
    """
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while time.monotonic() < deadline:
        publisher.publish(make_msg(attempt))
        attempt += 1
        try:
            return wait_for(condition, min(period_s, max(deadline - time.monotonic(), 0.01)), what)
        except AssertionError:
            continue
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Probe:
    def __init__(self, name: str = "probe"):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.captions: list[Caption] = []
        self.answers: list[Answer] = []
        self.diagnostics: dict[str, dict[str, str]] = {}  # status name -> latest key-values
        self.levels: dict[str, tuple[bytes, str]] = {}
        self.node.create_subscription(Caption, "captions", self.captions.append, RELIABLE)
        self.node.create_subscription(Answer, "answers", self.answers.append, RELIABLE)
        self.alerts: list[Alert] = []
        self.node.create_subscription(Alert, "alerts", self.alerts.append, RELIABLE)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, RELIABLE)
        self.ask_client = self.node.create_client(Ask, "ask")
        self.edit_alerts_client = self.node.create_client(EditAlerts, "edit_alerts")
        self._parameter_clients: dict = {}
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            self.diagnostics[status.name] = {kv.key: kv.value for kv in status.values}
            self.levels[status.name] = (status.level, status.message)

    def figure(self, node_name: str, key: str) -> float:
        values = self.diagnostics.get(f"streamvlm: /{node_name}", {})
        return float(values.get(key, "nan")) if key in values else float("nan")

    def ask(self, question: str, timeout_s: float = 120.0, max_new_tokens: int = 0) -> Ask.Response:
        return _call(self.ask_client, Ask.Request(question=question, max_new_tokens=max_new_tokens), timeout_s,
                     f"a response to {question!r}")

    def edit_alerts(self, add=(), remove=(), timeout_s: float = 60.0) -> EditAlerts.Response:
        return _call(self.edit_alerts_client, EditAlerts.Request(add=list(add), remove=list(remove)), timeout_s,
                     "a response from edit_alerts")

    def set_parameters(self, node_name: str, values: dict, timeout_s: float = 30.0) -> list:
        """Set parameters of another node through its parameter service, as `ros2 param set`
        does; the SetParametersResult of each."""
        from rcl_interfaces.srv import SetParameters

        client = self._parameter_clients.get(node_name)
        if client is None:
            client = self._parameter_clients[node_name] = self.node.create_client(
                SetParameters, f"/{node_name}/set_parameters")
        request = SetParameters.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg() for name, value in values.items()])
        return list(_call(client, request, timeout_s, f"a response from {node_name}/set_parameters").results)

    def publisher(self, msg_type, topic: str, qos=RELIABLE):
        return self.node.create_publisher(msg_type, topic, qos)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self._thread.join(10)


class Running:
    """Nodes on their own context and executor thread, as `streamvlm.ros.spin.run` would run them."""

    def __init__(self, make_nodes, overrides: dict):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        params = [Parameter(name, value=value) for name, value in overrides.items()]
        self.nodes = make_nodes(context=self.context, parameter_overrides=params)
        # As many threads as `streamvlm.ros.spin.run` gives the same nodes.
        threads = sum(getattr(node, "threads_wanted", 2) for node in self.nodes)
        self.executor = MultiThreadedExecutor(num_threads=threads, context=self.context)
        for node in self.nodes:
            self.executor.add_node(node)
        self.started = [node.start() for node in self.nodes]
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self):
        self.executor.shutdown()
        for node in self.nodes:
            node.deactivate_stage()
            node.release_stage()
            node.destroy_node()
        rclpy.shutdown(context=self.context)
        self.thread.join(10)


def start_node(executable: str, args: list[str], log_dir: Path) -> subprocess.Popen:
    """A console script of this environment (`llm_node`, `encoder_node`...) in its own process."""
    path = Path(sys.executable).parent / executable
    assert path.exists(), f"{path} missing: is the package installed in this environment?"
    log = open(log_dir / f"{executable}.log", "a")
    return subprocess.Popen([str(path), *args], stdout=log, stderr=subprocess.STDOUT)


def stop_node(process: subprocess.Popen) -> int:
    """SIGTERM, as `ros2 launch` stops a node; its exit code (SIGKILL after 30 s)."""
    process.terminate()
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _call(client, request, timeout_s: float, what: str):
    """A service's response, waited for here while the probe's executor delivers it."""
    assert client.wait_for_service(timeout_sec=timeout_s), f"no {client.srv_name} service"
    done = threading.Event()
    future = client.call_async(request)
    future.add_done_callback(lambda _: done.set())
    assert done.wait(timeout_s), f"no {what} within {timeout_s} s"
    return future.result()
