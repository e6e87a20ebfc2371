"""Synthetic camera streams with known ground truth, and questions about them.

`scene` draws the frames (deterministic from a seed); `questions` asks about them with
the answers the ground truth gives; `write` records a stream as a ROS 2 bag.
"""

from streamvlm.synth.scene import COLOURS, SHAPES, SceneObject, SyntheticScene, cells_covered, evaluation_scene

__all__ = ["COLOURS", "SHAPES", "SceneObject", "SyntheticScene", "cells_covered", "evaluation_scene"]
