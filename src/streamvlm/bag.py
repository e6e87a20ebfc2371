"""ROS 2 bags (MCAP and SQLite3) without ROS, through `rosbags`.

Reads camera images (sensor_msgs/Image and CompressedImage) and writes images and the
pipeline's outputs (streamvlm_msgs Caption and Answer), with the same CDR bytes rclpy
would produce, so the bags open in Foxglove and replay onto live topics.
"""

from __future__ import annotations

import functools
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from streamvlm.cameras import camera_error
from streamvlm.image import ImageError, decode_compressed, decode_raw, encode_compressed, encode_raw
from streamvlm.types import Alert, Answer, Caption, Frame

log = logging.getLogger(__name__)

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAPTION = "streamvlm_msgs/msg/Caption"
ANSWER = "streamvlm_msgs/msg/Answer"
VISION_TOKENS = "streamvlm_msgs/msg/VisionTokens"
ALERT = "streamvlm_msgs/msg/Alert"
_OWN_TYPES = {VISION_TOKENS: "VisionTokens.msg", CAPTION: "Caption.msg", ANSWER: "Answer.msg", ALERT: "Alert.msg"}


@functools.cache
def typestore():
    """ROS 2 message types plus streamvlm_msgs, read from the package's own .msg files.

    Built once per process; nothing registers types into it afterwards.
    """
    store = get_typestore(Stores.ROS2_HUMBLE)  # Humble's definitions are the oldest we support
    folder = resources.files("streamvlm") / "interfaces"
    for msgtype, filename in _OWN_TYPES.items():
        store.register(get_types_from_msg((folder / filename).read_text(), msgtype))
    return store


class BagFrames:
    """Iterates the frames of one or several image topics in recording order; bad frames are
    counted drops. With several topics each is a camera, and each frame says whose it is."""

    def __init__(self, path: str | Path, topics: str | list[str] | None = None):
        self.path = Path(path)
        self.dropped = 0
        with AnyReader([self.path], default_typestore=typestore()) as reader:
            images = {c.topic: c.msgtype for c in reader.connections if c.msgtype in (IMAGE, COMPRESSED)}
            counts = {c.topic: c.msgcount for c in reader.connections}
            self.start_ns = reader.start_time
            self.duration_ns = reader.duration
        specs = [topics] if isinstance(topics, str) else list(topics or [])
        if not specs:
            if len(images) != 1:
                raise ValueError(f"{self.path} has image topics {sorted(images)}; choose one with --topic "
                                 "(or several, one per camera)")
            specs = list(images)
        self.cameras = camera_topics(specs)  # topic -> camera name ("" for a single topic)
        for topic in self.cameras:
            if topic not in images:
                raise ValueError(f"{self.path} has no image topic {topic!r}; image topics: {sorted(images)}")
        self.topics = list(self.cameras)
        self.topic = self.topics[0]
        self.msgtypes = {topic: images[topic] for topic in self.topics}
        self.msgtype = self.msgtypes[self.topic]
        self.count = sum(counts[topic] for topic in self.topics)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Frame]:
        with AnyReader([self.path], default_typestore=typestore()) as reader:
            connections = [c for c in reader.connections if c.topic in self.cameras]
            for connection, log_ns, raw in reader.messages(connections=connections):
                try:
                    msg = reader.deserialize(raw, connection.msgtype)
                    rgb = _decode(msg, connection.msgtype)
                except (ImageError, ValueError, AssertionError) as err:
                    self.dropped += 1
                    log.warning("dropped frame %d of %s at %d ns: %s", self.dropped, connection.topic, log_ns, err)
                    continue
                stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                yield Frame(stamp or log_ns, log_ns, rgb, self.cameras[connection.topic])


def camera_topics(specs: list[str]) -> dict[str, str]:
    """Image topics and the cameras they are: "NAME=TOPIC", or a bare topic. One bare topic is
    the stream's only camera (""); among several, a bare topic's camera is named after its
    first path segment that says more than "camera" or "image" (/front/image_raw: front)."""
    cameras: dict[str, str] = {}
    for spec in specs:
        name, equals, topic = spec.partition("=")
        if not equals:
            name, topic = ("" if len(specs) == 1 else _name_from_topic(spec)), spec
        error = camera_error(name) or ("" if name or len(specs) == 1 else f"no camera name for {spec!r}")
        if error:
            raise ValueError(f"{error}; name it as NAME={topic}")
        if topic in cameras:
            raise ValueError(f"topic {topic!r} given twice")
        cameras[topic] = name
    names = list(cameras.values())
    if len(set(names)) != len(names):
        raise ValueError(f"two topics would be the same camera ({names}); name them as NAME=TOPIC")
    return cameras


def _name_from_topic(topic: str) -> str:
    generic = {"camera", "cameras", "image", "image_raw", "image_color", "image_rect", "compressed", "color", "rgb"}
    for part in (p for p in topic.split("/") if p):
        if part not in generic:
            return re.sub(r"\W", "_", part if part[0].isalpha() else f"cam_{part}")
    return ""


def _decode(msg, msgtype: str) -> np.ndarray:
    if msgtype == COMPRESSED:
        return decode_compressed(msg.format, msg.data)
    return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))


class BagWriter:
    """Writes images and pipeline outputs; `storage` is "mcap" or "sqlite3". The path must not exist."""

    def __init__(self, path: str | Path, storage: str = "mcap"):
        plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise ValueError(f"storage must be mcap or sqlite3, got {storage!r}")
        self.store = typestore()
        self._writer = Writer(Path(path), version=9, storage_plugin=plugins[storage])
        self._connections = {}
        self._writer.open()

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._writer.close()

    def write_image(self, topic: str, stamp_ns: int, rgb: np.ndarray, encoding: str = "rgb8",
                    frame_id: str = "camera") -> None:
        data, step = encode_raw(rgb, encoding)
        msg = self.store.types[IMAGE](
            header=self._header(stamp_ns, frame_id), height=rgb.shape[0], width=rgb.shape[1],
            encoding=encoding, is_bigendian=0, step=step, data=np.frombuffer(data, np.uint8),
        )
        self._write(topic, IMAGE, stamp_ns, msg)

    def write_compressed(self, topic: str, stamp_ns: int, rgb: np.ndarray, fmt: str = "jpeg",
                         quality: int = 90, frame_id: str = "camera") -> None:
        data = encode_compressed(rgb, fmt, quality)
        msg = self.store.types[COMPRESSED](
            header=self._header(stamp_ns, frame_id), format=fmt, data=np.frombuffer(data, np.uint8)
        )
        self._write(topic, COMPRESSED, stamp_ns, msg)

    def write_caption(self, topic: str, caption: Caption, frame_id: str = "camera") -> None:
        msg = self.store.types[CAPTION](
            header=self._header(caption.stamp_ns, frame_id), start=self._time(caption.start_ns),
            text=caption.text, latency_ms=caption.latency_ms,
        )
        self._write(topic, CAPTION, caption.stamp_ns, msg)

    def write_answer(self, topic: str, answer: Answer, frame_id: str = "camera") -> None:
        msg = self.store.types[ANSWER](
            header=self._header(answer.stamp_ns, frame_id), question=answer.question, answer=answer.text,
            success=answer.success, error=answer.error, latency_ms=answer.latency_ms,
            evidence=[self._time(t) for t in answer.evidence_ns], evidence_cameras=list(answer.evidence_cameras),
        )
        self._write(topic, ANSWER, answer.stamp_ns, msg)

    def write_alert(self, topic: str, alert: Alert, frame_id: str = "camera") -> None:
        msg = self.store.types[ALERT](
            header=self._header(alert.stamp_ns, frame_id), rule=alert.rule, camera=alert.camera, text=alert.text,
            probability=alert.probability, evidence=[self._time(t) for t in alert.evidence_ns],
            evidence_cameras=list(alert.evidence_cameras),
        )
        self._write(topic, ALERT, alert.stamp_ns, msg)

    def _write(self, topic: str, msgtype: str, stamp_ns: int, msg) -> None:
        if topic not in self._connections:
            self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=self.store)
        self._writer.write(self._connections[topic], stamp_ns, self.store.serialize_cdr(msg, msgtype))

    def _time(self, stamp_ns: int):
        sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
        return self.store.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)

    def _header(self, stamp_ns: int, frame_id: str):
        return self.store.types["std_msgs/msg/Header"](stamp=self._time(stamp_ns), frame_id=frame_id)
