"""Helpers for tests that exchange messages over DDS."""

from __future__ import annotations

import time
from collections.abc import Callable

from rclpy.executors import SingleThreadedExecutor


def spin_until(
    executor: SingleThreadedExecutor, done: Callable[[], bool], timeout_s: float = 10.0
) -> bool:
    """Spins `executor` until `done()` is true or `timeout_s` passes; returns done()."""
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    return done()
