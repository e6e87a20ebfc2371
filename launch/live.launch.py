"""Start streamvlm on a camera topic.

    ros2 launch streamvlm live.launch.py camera_topic:=/camera/image_raw
    ros2 launch streamvlm live.launch.py camera_topic:=/camera/image_raw compressed:=true composed:=true
    ros2 launch streamvlm live.launch.py model:=/models/llava-onevision-0.5b params_file:=/path/my.yaml
    ros2 launch streamvlm live.launch.py cameras:=front=/cam_f/image_raw,left=/cam_l/image_raw

Two processes (encoder_node, llm_node; tokens over DDS), or one (`live`, tokens in
memory) with composed:=true. The camera topic follows image_transport's naming: raw images
on `camera_topic`, compressed ones on `camera_topic`/compressed.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

ARGUMENTS = {
    "camera_topic": ("/camera/image_raw", "camera image topic (raw; compressed images on <topic>/compressed)"),
    "cameras": ("", "several cameras in one stream, NAME=TOPIC,NAME=TOPIC (each topic as camera_topic); "
                    "empty: the one camera on camera_topic"),
    "compressed": ("false", "subscribe <camera_topic>/compressed (sensor_msgs/CompressedImage)"),
    "model": ("", "HF id, local model directory or 'tiny'; empty keeps the params file's model.name"),
    "params_file": (os.path.join(get_package_share_directory("streamvlm"), "config", "live.yaml"),
                    "ROS 2 parameter file for both nodes"),
    "composed": ("false", "true: both stages in one process (`live`), tokens handed over in memory"),
    "namespace": ("", "namespace for the nodes and their relative topics"),
}


def _is_true(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes", "on")


def _nodes(context):
    arg = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    camera = arg["camera_topic"]
    overrides = {"compressed": _is_true(arg["compressed"])}
    if arg["model"]:
        overrides["model.name"] = arg["model"]
    common = dict(package="streamvlm", namespace=arg["namespace"], output="screen", emulate_tty=True,
                  parameters=[arg["params_file"], overrides])
    camera_remaps = [("image", camera), ("image/compressed", camera + "/compressed")]
    if arg["cameras"]:
        named = dict(item.split("=", 1) for item in arg["cameras"].split(",") if item.strip())
        overrides["cameras"] = list(named)
        camera_remaps = [remap for name, topic in named.items()
                         for remap in ((f"{name}/image", topic), (f"{name}/image/compressed", topic + "/compressed"))]
    if _is_true(arg["composed"]):
        # No `name=`: it would rename both nodes of the process to the same name.
        return [Node(executable="live", remappings=camera_remaps, **common)]
    return [Node(executable="encoder_node", remappings=camera_remaps, **common),
            Node(executable="llm_node", **common)]


def generate_launch_description():
    declared = [DeclareLaunchArgument(name, default_value=default, description=text)
                for name, (default, text) in ARGUMENTS.items()]
    return LaunchDescription(declared + [OpaqueFunction(function=_nodes)])
