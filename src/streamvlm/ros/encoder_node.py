"""encoder_node: camera images in, `vision_tokens` out (VisionStage behind a one-frame slot).

    ros2 run streamvlm encoder_node --ros-args -r image:=/camera/image_raw
    ros2 run streamvlm encoder_node --ros-args -p compressed:=true -r image/compressed:=/camera/image/compressed
"""

from __future__ import annotations

from typing import Any, Callable

from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from streamvlm_msgs.msg import VisionTokens

from streamvlm.debug_view import FrameView, draw
from streamvlm.image import encode_raw
from streamvlm.models import load_shared
from streamvlm.ros import convert
from streamvlm.ros.diagnostics import OK, WARN, grew
from streamvlm.ros.settings import EncoderSettings
from streamvlm.ros.stage_node import StageNode
from streamvlm.types import TokenBatch
from streamvlm.vision.stage import VisionStage
from streamvlm.vision.worker import VisionWorker

# Sensor-data QoS (best effort, volatile) with depth 1: a frame that cannot be taken now is
# worth nothing later.
CAMERA_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=qos_profile_sensor_data.reliability,
                        durability=qos_profile_sensor_data.durability)
# Tokens are few per second and each one matters to the LLM's context: reliable.
TOKENS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
# The debug picture: only the latest matters; reliable, so that rviz's and Foxglove's
# subscriptions (reliable or best effort) both match it.
DEBUG_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)


class EncoderNode(StageNode):
    SECTIONS = ("model", "vision", "stream")

    def __init__(self, node_name: str = "encoder_node", on_batch: Callable[[TokenBatch], None] | None = None,
                 **kwargs):
        """`on_batch` hands tokens over in memory (the one-process `live` composition); then
        `vision_tokens` is published only while someone subscribes to it."""
        super().__init__(node_name, EncoderSettings(), **kwargs)
        self._in_process = on_batch
        self.worker: VisionWorker | None = None
        self._publisher = None
        self._debug_publisher = None
        self._subscription = None
        self._frame_id = "camera"

    def configure_stage(self) -> None:
        stage = VisionStage(self.cfg, load_shared(self.cfg.model))
        self.worker = VisionWorker(stage, convert.image_to_rgb, self._hand_on, self.get_logger().warning)
        self._publisher = self.create_lifecycle_publisher(VisionTokens, "vision_tokens", TOKENS_QOS)
        self._debug_publisher = self.create_lifecycle_publisher(Image, "debug_image", DEBUG_QOS)
        self.worker.on_view = self._publish_view
        self.get_logger().info(f"configured: model {stage.model.name}, {self.cfg.vision.fps} fps")

    def activate_stage(self) -> None:
        self.worker.start()
        msg_type, topic = (CompressedImage, "image/compressed") if self.settings.compressed else (Image, "image")
        self._subscription = self.create_subscription(msg_type, topic, self._on_image, CAMERA_QOS)
        self.get_logger().info(f"listening on {self.resolve_topic_name(topic)}")

    def deactivate_stage(self) -> None:
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        if self.worker is not None:
            self.worker.stop()

    def release_stage(self) -> None:
        if self._publisher is not None:
            self.destroy_lifecycle_publisher(self._publisher)
            self._publisher = None
        if self._debug_publisher is not None:
            self.destroy_lifecycle_publisher(self._debug_publisher)
            self._debug_publisher = None
        self.worker = None  # the last reference to the stage, and with it the shared model's

    def reconfigure(self, cfg, settings) -> None:
        # Validated here (a ValueError refuses the change); applied on the worker's thread.
        if self.worker is not None:
            self.worker.reconfigure(cfg)

    def _on_image(self, msg: Image | CompressedImage) -> None:
        # A driver that leaves the stamp at zero gets the arrival time: frames still need an order.
        stamp = convert.stamp_ns(msg.header.stamp) or self.get_clock().now().nanoseconds
        self._frame_id = msg.header.frame_id or self._frame_id
        self.worker.submit(stamp, msg)

    def _hand_on(self, batch: TokenBatch) -> None:
        batch.frame_id = self._frame_id
        if self._in_process is not None:
            self._in_process(batch)
            if self._publisher.get_subscription_count() == 0:
                return
        self._publisher.publish(convert.batch_to_msg(batch, self.settings.tokens_dtype))

    def _publish_view(self, frame_rgb, view: FrameView) -> None:
        # On the worker's thread, after the tokens went out; drawn only when asked for and watched.
        if not self.settings.debug_image or self._debug_publisher.get_subscription_count() == 0:
            return
        drawn = draw(frame_rgb, view)
        data, step = encode_raw(drawn, "rgb8")
        msg = Image(height=drawn.shape[0], width=drawn.shape[1], encoding="rgb8", is_bigendian=0, step=step, data=data)
        msg.header.stamp = convert.to_time(view.stamp_ns)
        msg.header.frame_id = self._frame_id
        self._debug_publisher.publish(msg)

    def figures(self) -> dict[str, Any]:
        return self.worker.status() if self.worker is not None else {}

    def health(self, now: dict[str, Any], before: dict[str, Any]) -> tuple[bytes, str]:
        if now.get("frames received", 0) == 0:
            return WARN, "no camera frames received yet"
        if not grew(now, before, "frames received"):
            return WARN, "no camera frames in the last period"
        busy, invalid = grew(now, before, "frames dropped (busy)"), grew(now, before, "frames dropped (invalid)")
        if busy:
            return WARN, f"slower than the camera: {busy} frames dropped in the last period"
        if invalid:
            return WARN, f"{invalid} invalid frames dropped in the last period"
        return OK, "encoding"


def main(args: list[str] | None = None) -> int:
    from streamvlm.ros.spin import run

    return run(lambda: [EncoderNode()], args)


if __name__ == "__main__":
    import sys

    sys.exit(main())
