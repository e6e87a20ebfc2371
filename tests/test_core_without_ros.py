"""The core library must import and run on a machine without ROS (DESIGN.md section 1)."""

import subprocess
import sys

BLOCK_ROS = """
import importlib.abc, pkgutil, sys
ROS = ("rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "builtin_interfaces", "rcl_interfaces",
       "streamvlm_msgs", "cv_bridge")
class BlockRos(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ROS:
            raise ImportError(f"{name} is blocked: the core must not import ROS")
sys.meta_path.insert(0, BlockRos())
import streamvlm
modules = [m.name for m in pkgutil.walk_packages(streamvlm.__path__, "streamvlm.")
           if not m.name.startswith("streamvlm.ros")]
for name in modules:
    __import__(name)
print(len(modules), "modules")
"""


def test_core_imports_with_ros_blocked():
    result = subprocess.run([sys.executable, "-c", BLOCK_ROS], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[0]) >= 10
