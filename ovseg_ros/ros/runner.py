"""Running a node as a program: init, build, spin until Ctrl-C or SIGTERM, stop quietly.

Every way out is one line at most: a node that cannot be built prints why and exits 1; Ctrl-C
or SIGTERM (once or several times, with a frame in flight or not) exits 0 within
STOP_TIMEOUT_S plus a moment, without a traceback.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn, Protocol

import rclpy
import rclpy.logging
import rclpy.signals
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

SPIN_PERIOD_S = 0.2
"""Longest time the executor waits before it looks at STOP_REQUESTED and the context."""

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


STOP_REQUESTED = threading.Event()
"""Set by SIGINT or SIGTERM once stop_on_signals() has run."""


def stop_on_signals() -> None:
    """From now on SIGINT and SIGTERM set STOP_REQUESTED, instead of raising KeyboardInterrupt
    or ending the process at once. The node programs call it before they import torch (seconds),
    so a Ctrl-C during those imports is neither lost nor a traceback."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: STOP_REQUESTED.set())


def exit_now(code: int) -> NoReturn:
    """Ends a node program that has shut down in order: flushes stdout and stderr and leaves
    with os._exit, skipping the interpreter's own teardown, which takes 0.7 to 2 s once torch,
    open_clip and the DDS libraries are loaded."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_program(module: str) -> NoReturn:
    """An installed node program: stop_on_signals(), then import `module` and exit with its
    main()."""
    stop_on_signals()
    exit_now(importlib.import_module(module).main())


def segmenter_main() -> NoReturn:
    """The `ovseg_segmenter` program (ros2 run / ros2 launch; pip's console script)."""
    run_program("ovseg_ros.ros.segmenter_node")


def frame_publisher_main() -> NoReturn:
    """The `ovseg_frame_publisher` program."""
    run_program("ovseg_ros.ros.frame_publisher")


def _init_quietly(argv: list[str]) -> None:
    """rclpy.init(argv) without rcl's own error log line ("Failed to parse global arguments")
    when the arguments are bad: the exception says the same, and run_node prints it once."""
    rclpy.logging.set_logger_level("rcl", rclpy.logging.LoggingSeverity.FATAL)
    try:
        rclpy.init(args=argv, signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    finally:
        rclpy.logging.set_logger_level("rcl", rclpy.logging.LoggingSeverity.UNSET)


def run_node(
    make_node: Callable[[], StoppableNode], program: str, argv: list[str] | None = None
) -> int:
    """Builds the node with `make_node` after rclpy.init(argv) and spins it; callbacks are short
    (the segmenter infers on worker threads of its own), so one executor thread serves them.

    SIGINT and SIGTERM only set STOP_REQUESTED, which the executor looks at every
    SPIN_PERIOD_S. rclpy's own signal handlers are not installed: they shut the context down
    under a node still being built or a worker still publishing, and raced with the executor's
    wait. So no KeyboardInterrupt surfaces anywhere, and a signal while the node is being built
    ends the process quietly once it is built. Once stopping, further signals are ignored. A
    node whose `stop(timeout_s)` returns False still has a thread busy in native code (a CLIP
    forward): the process then leaves at once with os._exit rather than wait for it or tear the
    interpreter down under it.

    Returns 0 on a stop by signal, 1 when the node cannot be built (one line on stderr naming
    the cause: missing weights, a bad parameter value or params file, an unreadable source).
    """
    stop_on_signals()
    if STOP_REQUESTED.is_set():  # while the program was importing
        return 0
    context = rclpy.get_default_context()
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
        while context.ok() and not STOP_REQUESTED.is_set():
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
    except ExternalShutdownException:
        pass
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    if not node.stop(STOP_TIMEOUT_S):
        exit_now(0)
    executor.shutdown(timeout_sec=0.5)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0
