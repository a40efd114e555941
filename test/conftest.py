"""Shared fixtures. ROS tests talk over real DDS, on loopback and on a domain of their own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Discovery stays on loopback; a per-run domain keeps concurrent test runs apart.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))


@pytest.fixture
def ros_context():
    """An initialised rclpy context, shut down after the test."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    context.try_shutdown()
