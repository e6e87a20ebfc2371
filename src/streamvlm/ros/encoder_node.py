"""encoder_node: camera images in, `vision_tokens` out (VisionStage behind a one-frame slot).

    ros2 run streamvlm encoder_node --ros-args -r image:=/camera/image_raw
    ros2 run streamvlm encoder_node --ros-args -p compressed:=true -r image/compressed:=/camera/image/compressed
    ros2 run streamvlm encoder_node --ros-args -p "cameras:=[front, left]" -r front/image:=/cam_f/image_raw \
        -r left/image:=/cam_l/image_raw
"""

from __future__ import annotations

import functools
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
        # One worker per camera ("" : the only one), each with its own delta cache, pruner,
        # sampler, timeline and one-frame slot; they share the model and the ViT backend.
        self.workers: dict[str, VisionWorker] = {}
        self._publisher = None
        self._debug_publishers: dict[str, Any] = {}
        self._subscriptions: list = []
        self._frame_ids: dict[str, str] = {}

    @property
    def worker(self) -> VisionWorker | None:
        """The first (or only) camera's worker."""
        return next(iter(self.workers.values()), None)

    def configure_stage(self) -> None:
        model = load_shared(self.cfg.model)
        backend = None
        for camera in self.settings.cameras or ("",):
            stage = VisionStage(self.cfg, model, backend)
            backend = stage.encoder.backend  # one ONNX session / TensorRT engine for every camera
            worker = VisionWorker(stage, convert.image_to_rgb, functools.partial(self._hand_on, camera),
                                  self.get_logger().warning)
            worker.on_view = functools.partial(self._publish_view, camera)
            self.workers[camera] = worker
            self._frame_ids[camera] = camera or "camera"
            self._debug_publishers[camera] = self.create_lifecycle_publisher(
                Image, _camera_topic(camera, "debug_image"), DEBUG_QOS)
        self._publisher = self.create_lifecycle_publisher(VisionTokens, "vision_tokens", TOKENS_QOS)
        cameras = f", cameras {', '.join(self.workers)}" if self.settings.cameras else ""
        self.get_logger().info(f"configured: model {model.name}, {self.cfg.vision.fps} fps{cameras}")

    def activate_stage(self) -> None:
        msg_type, leaf = (CompressedImage, "image/compressed") if self.settings.compressed else (Image, "image")
        for camera, worker in self.workers.items():
            worker.start()
            topic = _camera_topic(camera, leaf)
            callback = functools.partial(self._on_image, camera)
            self._subscriptions.append(self.create_subscription(msg_type, topic, callback, CAMERA_QOS))
            self.get_logger().info(f"listening on {self.resolve_topic_name(topic)}")

    def deactivate_stage(self) -> None:
        for subscription in self._subscriptions:
            self.destroy_subscription(subscription)
        self._subscriptions = []
        for worker in self.workers.values():
            worker.stop()

    def release_stage(self) -> None:
        if self._publisher is not None:
            self.destroy_lifecycle_publisher(self._publisher)
            self._publisher = None
        for publisher in self._debug_publishers.values():
            self.destroy_lifecycle_publisher(publisher)
        self._debug_publishers = {}
        self.workers = {}  # the last references to the stages, and with them the shared model's

    def reconfigure(self, cfg, settings) -> None:
        # Validated here (a ValueError refuses the change); applied on the workers' threads.
        for worker in self.workers.values():
            worker.stage.check_change(cfg)
        for worker in self.workers.values():
            worker.reconfigure(cfg)

    def _on_image(self, camera: str, msg: Image | CompressedImage) -> None:
        # A driver that leaves the stamp at zero gets the arrival time: frames still need an order.
        stamp = convert.stamp_ns(msg.header.stamp) or self.get_clock().now().nanoseconds
        self._frame_ids[camera] = msg.header.frame_id or self._frame_ids[camera]
        self.workers[camera].submit(stamp, msg)

    def _hand_on(self, camera: str, batch: TokenBatch) -> None:
        batch.frame_id, batch.camera = self._frame_ids[camera], camera
        if self._in_process is not None:
            self._in_process(batch)
            if self._publisher.get_subscription_count() == 0:
                return
        self._publisher.publish(convert.batch_to_msg(batch, self.settings.tokens_dtype))

    def _publish_view(self, camera: str, frame_rgb, view: FrameView) -> None:
        # On the worker's thread, after the tokens went out; drawn only when asked for and watched.
        publisher = self._debug_publishers.get(camera)
        if not self.settings.debug_image or publisher is None or publisher.get_subscription_count() == 0:
            return
        drawn = draw(frame_rgb, view)
        data, step = encode_raw(drawn, "rgb8")
        msg = Image(height=drawn.shape[0], width=drawn.shape[1], encoding="rgb8", is_bigendian=0, step=step, data=data)
        msg.header.stamp = convert.to_time(view.stamp_ns)
        msg.header.frame_id = self._frame_ids[camera]
        publisher.publish(msg)

    def figures(self) -> dict[str, Any]:
        if len(self.workers) <= 1:
            return self.worker.status() if self.worker is not None else {}
        return merge_camera_status({camera: worker.status() for camera, worker in self.workers.items()})

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


def _camera_topic(camera: str, leaf: str) -> str:
    """`image` for the only camera, `front/image` for the camera named front (relative: a
    namespace or a remap places them)."""
    return f"{camera}/{leaf}" if camera else leaf


def merge_camera_status(by_camera: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Several cameras' figures as one node's: counts summed (so health checks read them
    as before), each camera's rates and times under its name, settings once."""
    merged: dict[str, Any] = {}
    for camera, status in by_camera.items():
        for key, value in status.items():
            if key.startswith("setting ") or isinstance(value, str):
                merged.setdefault(key, value)
            elif isinstance(value, int) and not isinstance(value, bool):
                merged[key] = merged.get(key, 0) + value
            else:
                merged[f"{camera}: {key}"] = value
    return merged


def main(args: list[str] | None = None) -> int:
    from streamvlm.ros.spin import run

    return run(lambda: [EncoderNode()], args)


if __name__ == "__main__":
    import sys

    sys.exit(main())
