"""streamvlm: real-time understanding of never-ending camera streams.

The core library (everything outside `streamvlm.ros`) never imports ROS.
"""

__version__ = "0.1.0"
