"""Running a node as a program: init, build, spin until Ctrl-C or SIGTERM, stop quietly.

Every way out is one line at most: a node that cannot be built prints why and exits 1; Ctrl-C
or SIGTERM (once or several times, with a frame in flight or not) exits 0 within
STOP_TIMEOUT_S plus a moment, without a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Protocol

import rclpy
import rclpy.logging
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

STOP_TIMEOUT_S = 1.0
"""Longest wait for a node's worker threads at shutdown before the process leaves without them
(a CLIP forward in flight cannot be interrupted and may take seconds on a CPU)."""


class StoppableNode(Protocol):
    """A node run by run_node: an rclpy Node that can stop its own threads."""

    def stop(self, timeout_s: float) -> bool:
        """Stops the node's threads within timeout_s; False when one is still busy."""

    def destroy_node(self) -> None: ...


def start_error_line(program: str, exc: BaseException) -> str:
    """The one line printed when a node cannot start: the program and the cause, with a
    multi-line cause folded onto one line."""
    cause = " ".join(str(exc).split()) or type(exc).__name__
    return f"[ERROR] [{program}]: cannot start: {cause}"


def _init_quietly(argv: list[str]) -> None:
    """rclpy.init(argv) without rcl's own error log line ("Failed to parse global arguments")
    when the arguments are bad: the exception says the same, and run_node prints it once."""
    rclpy.logging.set_logger_level("rcl", rclpy.logging.LoggingSeverity.FATAL)
    try:
        rclpy.init(args=argv)
    finally:
        rclpy.logging.set_logger_level("rcl", rclpy.logging.LoggingSeverity.UNSET)


def run_node(
    make_node: Callable[[], StoppableNode], program: str, argv: list[str] | None = None
) -> int:
    """Builds the node with `make_node` after rclpy.init(argv) and spins it; callbacks are short
    (the segmenter infers on worker threads of its own), so one executor thread serves them.

    rclpy's signal handlers shut the context down on SIGINT and SIGTERM, which ends the spin;
    further signals are ignored while the node stops. A node whose `stop(timeout_s)`
    returns False still has a thread busy in native code (a CLIP forward): the process then
    leaves at once with os._exit rather than wait for it or tear the interpreter down under it.

    Returns 0 on a clean stop, 1 when the node cannot be built (one line on stderr naming the
    cause: missing weights, a bad parameter value or params file, an unreadable source).
    """
    try:
        _init_quietly(argv if argv is not None else sys.argv)
        node = make_node()
    except Exception as exc:  # noqa: BLE001 - any start-up error is reported the same way
        print(start_error_line(program, exc), file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if not node.stop(STOP_TIMEOUT_S):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    executor.shutdown(timeout_sec=0.5)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0
