"""Periodic /diagnostics (diagnostic_msgs/DiagnosticArray) for a node: its worker's figures
as key-values, and a level and message that say what an operator should look at."""

from __future__ import annotations

from typing import Any, Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR

# (figures now, figures one period ago) -> (level, message)
Health = Callable[[dict[str, Any], dict[str, Any]], tuple[bytes, str]]


class DiagnosticsPublisher:
    def __init__(self, node: Node, status: Callable[[], dict[str, Any]], health: Health, period_s: float):
        self._node = node
        self._status = status
        self._health = health
        self._previous: dict[str, Any] = {}
        # A plain publisher, not a lifecycle one: an unconfigured node must still say why.
        self._publisher = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._timer = node.create_timer(period_s, self.publish)

    def publish(self) -> None:
        figures = self._status()
        level, message = self._health(figures, self._previous)
        self._previous = figures
        status = DiagnosticStatus(
            level=level, name=f"streamvlm: {self._node.get_fully_qualified_name()}", message=message,
            hardware_id=self._node.get_name(), values=[KeyValue(key=k, value=str(v)) for k, v in figures.items()],
        )
        array = DiagnosticArray(status=[status])
        array.header.stamp = self._node.get_clock().now().to_msg()
        self._publisher.publish(array)


def grew(now: dict[str, Any], before: dict[str, Any], key: str) -> int:
    """How much a counter rose since the last report."""
    return int(now.get(key, 0)) - int(before.get(key, 0))
