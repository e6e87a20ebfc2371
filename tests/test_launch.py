"""launch/live.launch.py under launch_testing: both layouts start, take the camera topic and
answer on `ask`.

Needs a ROS 2 install with launch_testing and launch_ros (they are not on PyPI) and this
package built into it with colcon (`ros2 launch` finds executables through the ament index).
"""

from __future__ import annotations

import unittest

import pytest

launch_testing = pytest.importorskip(
    "launch_testing", reason="launch_testing is not installed: ROS 2 launch comes with a ROS 2 install, not PyPI")
pytest.importorskip("launch_ros", reason="launch_ros is not installed: it comes with a ROS 2 install, not PyPI")
ament_index = pytest.importorskip("ament_index_python.packages")
try:
    ament_index.get_package_share_directory("streamvlm")
except ament_index.PackageNotFoundError:
    pytest.skip("streamvlm is not in the ament index: build it with colcon and source the install",
                allow_module_level=True)

import launch  # noqa: E402
import launch_testing.actions  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

from conftest import ROOT  # noqa: E402
from ros_probe import Probe, wait_for  # noqa: E402


@pytest.mark.launch_test
@launch_testing.parametrize("composed", ["false", "true"])
def generate_test_description(composed):
    arguments = {"model": "tiny", "compressed": "true", "camera_topic": "/camera/image", "composed": composed}
    include = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(ROOT / "launch" / "live.launch.py")), launch_arguments=arguments.items())
    return launch.LaunchDescription([include, launch_testing.actions.ReadyToTest()])


class TestLiveLaunch(unittest.TestCase):
    def test_nodes_listen_and_answer(self, proc_output):
        proc_output.assertWaitFor("listening on /camera/image/compressed", timeout=120, stream="stderr")
        probe = Probe("launch_probe")
        try:
            response = probe.ask("Is anything there?", timeout_s=60)
            self.assertFalse(response.success)  # no camera is playing: a clear refusal
            self.assertIn("no camera frames", response.error)
            wait_for(lambda: {"streamvlm: /encoder_node", "streamvlm: /llm_node"} <= set(probe.levels), 30,
                     "diagnostics from both nodes")
        finally:
            probe.close()


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_clean_exit(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0, -2, -15])
