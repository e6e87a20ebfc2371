"""What the encoder and LLM nodes share: parameters from config dataclasses, run-time
changes validated before they apply, the lifecycle state for diagnostics, and autostart.

A LifecycleNode, so the model is loaded in `on_configure` and freed in `on_cleanup`, and a
system manager can order start-up (`ros2 lifecycle set`). With `autostart` (the default)
the node configures and activates itself, like a plain node.
"""

from __future__ import annotations

from typing import Any

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from streamvlm import config
from streamvlm.ros import params
from streamvlm.ros.diagnostics import ERROR, OK, WARN, DiagnosticsPublisher

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class StageNode(LifecycleNode):
    SECTIONS: tuple[str, ...] = ()  # pipeline config sections this node uses

    def __init__(self, node_name: str, settings: Any, **kwargs):
        super().__init__(node_name, **kwargs)
        self.state_label = "unconfigured"
        self.configure_error = ""
        params.rename_legacy(self, config.LEGACY_NAMES)
        node_values = params.declare(self, config.described(settings))
        self.settings = config.replace_checked(settings, node_values)
        flat = params.declare(self, config.described(config.PipelineConfig(), self.SECTIONS))
        self.cfg = config.from_flat(flat)
        params.on_change(self, set(node_values) | set(flat), self._change)
        self.diagnostics = DiagnosticsPublisher(self, self._status, self._health, self.settings.diagnostics_period_s)

    def start(self) -> bool:
        """Configure and activate when `autostart` is set; True when the node is active."""
        if not self.settings.autostart:
            self.get_logger().info("autostart is off: waiting for a lifecycle manager to configure me")
            return False
        if self.trigger_configure() != SUCCESS:
            return False
        return self.trigger_activate() == SUCCESS

    # Subclasses: `reconfigure(cfg, settings)` applies validated run-time changes;
    # `figures()` and `health(now, before)` describe the running worker.
    def reconfigure(self, cfg: config.PipelineConfig, settings: Any) -> None:
        pass

    def figures(self) -> dict[str, Any]:
        return {}

    def health(self, now: dict[str, Any], before: dict[str, Any]) -> tuple[bytes, str]:
        return OK, "running"

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.state_label = "configuring"
        try:
            self.configure_stage()
        except Exception as err:  # noqa: BLE001 - any failure leaves the node up, unconfigured
            self.configure_error = f"{type(err).__name__}: {err}"
            self.get_logger().error(f"configure failed: {self.configure_error}")
            self.release_stage()
            self.state_label = "unconfigured"
            return FAILURE
        self.configure_error = ""
        self.state_label = "inactive"
        return SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.activate_stage()
        self.state_label = "active"
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.deactivate_stage()
        self.state_label = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release_stage()
        self.state_label = "unconfigured"
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.deactivate_stage()
        self.release_stage()
        self.state_label = "finalized"
        return super().on_shutdown(state)

    def configure_stage(self) -> None:
        raise NotImplementedError

    def activate_stage(self) -> None:
        raise NotImplementedError

    def deactivate_stage(self) -> None:
        raise NotImplementedError

    def release_stage(self) -> None:
        raise NotImplementedError

    def _change(self, changes: dict[str, Any]) -> None:
        pipeline = {k: v for k, v in changes.items() if "." in k}
        own = {k: v for k, v in changes.items() if "." not in k}
        cfg = config.from_flat(pipeline, self.cfg) if pipeline else self.cfg  # raises ValueError to refuse
        settings = config.replace_checked(self.settings, own) if own else self.settings
        self.reconfigure(cfg, settings)
        self.cfg, self.settings = cfg, settings

    def _status(self) -> dict[str, Any]:
        return {"lifecycle state": self.state_label, **self.figures()}

    def _health(self, now: dict[str, Any], before: dict[str, Any]) -> tuple[bytes, str]:
        if self.configure_error:
            return ERROR, f"not configured: {self.configure_error}"
        if self.state_label != "active":
            return WARN, f"{self.state_label}: not processing"
        return self.health(now, before)

