"""Running a node as a program: init, build, spin until Ctrl-C or shutdown, clean up."""

from __future__ import annotations

import sys
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node


def run_node(make_node: Callable[[], Node], argv: list[str] | None = None) -> int:
    """Builds the node with `make_node` after rclpy.init(argv) and spins it; callbacks are short
    (the segmenter infers on a worker thread of its own), so one executor thread serves them.

    Returns 0 on a clean stop, 1 when the node cannot be built (the reason goes to stderr:
    missing weights, a bad parameter value, an unreadable source).
    """
    rclpy.init(args=argv if argv is not None else sys.argv)
    try:
        node = make_node()
    except Exception as exc:  # noqa: BLE001 - any start-up error is reported the same way
        print(f"[{getattr(make_node, '__name__', 'node')}] cannot start: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
