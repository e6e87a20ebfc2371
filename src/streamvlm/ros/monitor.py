"""`streamvlm diagnostics`: print what the streamvlm nodes report on /diagnostics.

For machines without the ros2 CLI or rqt_robot_monitor; one line per node and report, or
JSON lines with --json.
"""

from __future__ import annotations

import json
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import ExternalShutdownException

_LEVELS = {0: "OK", 1: "WARN", 2: "ERROR", 3: "STALE"}


def watch(duration_s: float = 0.0, as_json: bool = False, prefix: str = "streamvlm: ", out=print) -> int:
    """Print reports until `duration_s` has passed (0: until Ctrl-C); returns the number printed."""
    rclpy.init()
    node = rclpy.create_node("streamvlm_diagnostics")
    printed = 0

    def on_array(msg: DiagnosticArray) -> None:
        nonlocal printed
        for status in msg.status:
            if not status.name.startswith(prefix):
                continue
            level = _LEVELS.get(int.from_bytes(status.level, "little") if isinstance(status.level, bytes)
                                else int(status.level), "?")
            values = {kv.key: kv.value for kv in status.values}
            if as_json:
                out(json.dumps({"node": status.name[len(prefix):], "level": level, "message": status.message,
                                **values}))
            else:
                figures = ", ".join(f"{k}={v}" for k, v in values.items())
                out(f"{status.name[len(prefix):]} [{level}] {status.message}: {figures}")
            printed += 1

    node.create_subscription(DiagnosticArray, "/diagnostics", on_array, 50)
    deadline = time.monotonic() + duration_s if duration_s > 0 else float("inf")
    try:
        while rclpy.ok() and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return printed
