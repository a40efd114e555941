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


def call_service(executor, client, request, timeout_s: float = 60.0, resend_s: float = 5.0):
    """client's response to `request`, or None after timeout_s. The request is sent again every
    resend_s while no response came: a request made right after discovery can lose its reply,
    whose path (the service's reply writer to this client's reader) may not be matched yet.
    For idempotent services only (parameters read)."""
    deadline = time.monotonic() + timeout_s
    if not client.wait_for_service(timeout_sec=timeout_s):
        return None
    while time.monotonic() < deadline:
        future = client.call_async(request)
        if spin_until(executor, future.done, min(resend_s, deadline - time.monotonic())):
            return future.result()
    return None
