"""`streamvlm play`: publish a bag's image topics onto live topics at the recorded rate.

The recorded CDR bytes are published as they are (rclpy publishes serialized messages),
so nothing is decoded or re-encoded and the nodes see exactly what the camera sent. A
stand-in for `ros2 bag play` on machines without the ros2 CLI.
"""

from __future__ import annotations

import time
from pathlib import Path

import rclpy
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.highlevel import AnyReader
from sensor_msgs.msg import CompressedImage, Image

from streamvlm.bag import COMPRESSED, IMAGE, BagFrames, typestore

_TYPES = {IMAGE: Image, COMPRESSED: CompressedImage}
# Reliable keep-last: matches best-effort camera subscribers as well as reliable ones.
QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE)


def play(bag: Path, topics: str | list[str] | None = None, to: str | None = None, rate: float = 1.0,
         loop: bool = False, wait_s: float = 0.0, log=print) -> int:
    """Publishes until the bag ends (or forever with `loop`); returns the messages sent.
    Several topics (several cameras) are published interleaved as recorded, each on its own
    recorded name; `to` renames a single topic."""
    if rate <= 0:
        raise ValueError(f"--rate must be > 0, got {rate}")
    frames = BagFrames(bag, topics)  # picks and checks the image topics
    if to and len(frames.topics) > 1:
        raise ValueError("--to renames one topic; with several, remap them on the receiving side")
    rclpy.init()
    node = rclpy.create_node("streamvlm_play")
    sent = 0
    try:
        publishers = {topic: node.create_publisher(_TYPES[frames.msgtypes[topic]], to or topic, QOS)
                      for topic in frames.topics}
        for publisher in publishers.values():
            _wait_for_subscriber(publisher, wait_s, publisher.topic_name, log)
        names = ", ".join(p.topic_name for p in publishers.values())
        log(f"playing {frames.count} messages of {', '.join(frames.topics)} onto {names} at {rate}x"
            + (" (looping)" if loop else ""))
        while rclpy.ok():
            sent += _play_once(frames, publishers, rate)
            if not loop:
                break
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return sent


def _wait_for_subscriber(publisher, wait_s: float, topic: str, log) -> None:
    if wait_s <= 0:
        return
    deadline = time.monotonic() + wait_s
    if publisher.get_subscription_count() == 0:
        log(f"waiting up to {wait_s:g} s for a subscriber on {topic}")
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)


def _play_once(frames: BagFrames, publishers: dict, rate: float) -> int:
    sent = 0
    with AnyReader([frames.path], default_typestore=typestore()) as reader:
        connections = [c for c in reader.connections if c.topic in publishers]
        start_wall = time.monotonic()
        start_log = None
        for connection, log_ns, raw in reader.messages(connections=connections):
            if not rclpy.ok():  # Ctrl-C or SIGTERM: rclpy's handler shut the context down
                break
            start_log = log_ns if start_log is None else start_log
            delay = (log_ns - start_log) / 1e9 / rate - (time.monotonic() - start_wall)
            if delay > 0:
                time.sleep(delay)
            publishers[connection.topic].publish(bytes(raw))
            sent += 1
    return sent
