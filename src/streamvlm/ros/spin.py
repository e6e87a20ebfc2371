"""Running nodes as a program: `main(args=None)` of every console script ends here."""

from __future__ import annotations

import sys
from typing import Callable

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation

from streamvlm.ros.stage_node import StageNode


def run(make_nodes: Callable[[], list[StageNode]], args: list[str] | None = None) -> int:
    """Create the nodes, start those with `autostart`, spin until Ctrl-C or SIGTERM.

    A node whose configure fails stays up, unconfigured, and says why on /diagnostics; a
    lifecycle manager can configure it again. A bad parameter at start is an error exit.
    """
    _quiet_libraries()
    rclpy.init(args=args)
    nodes: list[StageNode] = []
    try:
        nodes = make_nodes()
        executor = MultiThreadedExecutor(num_threads=sum(getattr(n, "threads_wanted", 2) for n in nodes))
        for node in nodes:
            executor.add_node(node)
        for node in nodes:
            node.start()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except rclpy_implementation.RCLError:
        # SIGTERM's handler shuts the context down from another thread; an executor between
        # its check of the context and building its wait set then gets "context is not
        # valid" instead of ExternalShutdownException (a race inside rclpy, seen in CI).
        # After a shutdown that is the same clean stop; otherwise it is a real error.
        if rclpy.ok():
            raise
    except (ParameterException, ValueError) as err:
        print(f"streamvlm: invalid parameter: {err}", file=sys.stderr)
        return 2
    finally:
        for node in reversed(nodes):
            _finish(node)
        if rclpy.ok():
            rclpy.shutdown()
    return 0


def _finish(node: StageNode) -> None:
    # Stop the workers and free the model. Not through a lifecycle transition: after
    # SIGINT/SIGTERM the context is shut down and rcl's state machine refuses them.
    node.deactivate_stage()
    node.release_stage()
    node.destroy_node()


def _quiet_libraries() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
