"""One camera of the segmenter node: its input subscriptions, its newest frame, the depth image
and camera_info paired with that frame, its output publishers and its counters.

Wiring only, like the node: the conversions are in conversions.py and the 3D in
engine/geometry.py.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from ovseg_ros.cameras import CameraTopics
from ovseg_ros.engine.geometry import Intrinsics
from ovseg_ros.msg import SegmentationResult
from ovseg_ros.ros.conversions import (
    CameraInfoError,
    ImageConversionError,
    camera_info_to_intrinsics,
    depth_to_metres,
)

DEPTH_BUFFER = 10
"""Depth images kept per camera for pairing by stamp (a third of a second at 30 Hz)."""


@dataclass
class FrameStats:
    """Counters since start: frames received, processed, dropped as stale, replaced by a newer
    frame before processing, skipped because they could not be converted or segmented; overlays
    rendered (only while ~/overlay has a subscriber); with depth: frames given 3D, and frames
    segmented in 2D only because no depth image was within depth_tolerance_s, no camera_info had
    arrived, or the depth or camera_info could not be used."""

    received: int = 0
    processed: int = 0
    dropped_stale: int = 0
    replaced: int = 0
    invalid: int = 0
    overlays: int = 0
    with_depth: int = 0
    depth_unmatched: int = 0
    depth_invalid: int = 0

    def __add__(self, other: FrameStats) -> FrameStats:
        return FrameStats(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )


def stamp_ns(msg: Image | CompressedImage | CameraInfo) -> int:
    """The message's header stamp in nanoseconds."""
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


class DepthBuffer:
    """The newest DEPTH_BUFFER depth images of one camera; thread-safe."""

    def __init__(self, size: int = DEPTH_BUFFER) -> None:
        self._images: collections.deque[Image] = collections.deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, msg: Image) -> None:
        with self._lock:
            self._images.append(msg)

    def match(self, stamp: int, tolerance_ns: int) -> Image | None:
        """The depth image whose stamp is nearest `stamp` (ns), if within tolerance_ns."""
        with self._lock:
            images = list(self._images)
        if not images:
            return None
        nearest = min(images, key=lambda msg: abs(stamp_ns(msg) - stamp))
        return nearest if abs(stamp_ns(nearest) - stamp) <= tolerance_ns else None


@dataclass
class DepthFrame:
    """Depth paired with a colour frame: (h, w) float32 metres (0 = no depth) and the colour
    camera's intrinsics at the colour image's size."""

    depth_m: np.ndarray
    intrinsics: Intrinsics


class CameraStream:
    """Subscriptions, newest frame and publishers of one camera.

    topics: the camera's input topics (CameraTopics); outputs: the prefix of its output topics
    ("~" for the node's own, else NAMESPACE/<node name>); label: how log lines name it ("" for
    a node's only camera); notify: the node's condition, notified on every new frame.
    """

    def __init__(
        self,
        node: Node,
        topics: CameraTopics,
        outputs: str,
        label: str,
        input_qos: QoSProfile,
        compressed: bool,
        notify: threading.Condition,
    ) -> None:
        self.topics = topics
        self.label = label
        self.stats = FrameStats()
        self.pending: Image | CompressedImage | None = None
        self.last_start = -float("inf")
        self._notify = notify
        self._camera_info: CameraInfo | None = None
        self.depth = DepthBuffer() if topics.has_depth else None
        self.labels_pub = node.create_publisher(Image, f"{outputs}/labels", 1)
        self.overlay_pub = node.create_publisher(Image, f"{outputs}/overlay", 1)
        self.result_pub = node.create_publisher(SegmentationResult, f"{outputs}/result", 1)
        self.points_pub = (
            node.create_publisher(PointCloud2, f"{outputs}/points", 1) if topics.has_depth else None
        )
        if compressed:
            node.create_subscription(
                CompressedImage, f"{topics.image}/compressed", self._on_image, input_qos
            )
        else:
            node.create_subscription(Image, topics.image, self._on_image, input_qos)
        if self.depth is not None:
            depth_qos = QoSProfile(
                depth=DEPTH_BUFFER,
                history=input_qos.history,
                durability=input_qos.durability,
                reliability=input_qos.reliability,
            )
            depth_sub = node.create_subscription(Image, topics.depth, self.depth.add, depth_qos)
            info_sub = node.create_subscription(
                CameraInfo, topics.camera_info, self._on_camera_info, input_qos
            )
            self.depth_topic, self.camera_info_topic = depth_sub.topic_name, info_sub.topic_name

    def prefix(self, text: str) -> str:
        """A log line about this camera: `[label] text`, or text alone for the only camera."""
        return f"[{self.label}] {text}" if self.label else text

    def _on_image(self, msg: Image | CompressedImage) -> None:
        """Keeps only the newest frame; the node's worker takes it from there."""
        with self._notify:
            self.stats.received += 1
            if self.pending is not None:
                self.stats.replaced += 1
            self.pending = msg
            self._notify.notify()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def ready_at(self, max_rate_hz: float) -> float:
        """time.monotonic() from which this camera's next frame may start (max_rate_hz)."""
        return self.last_start + 1.0 / max_rate_hz if max_rate_hz > 0 else -float("inf")

    def take(self) -> Image | CompressedImage:
        """The pending frame, now starting (call with the node's condition held)."""
        msg, self.pending = self.pending, None
        self.last_start = time.monotonic()
        return msg

    def depth_for(
        self, frame: Image | CompressedImage, size: tuple[int, int], tolerance_s: float,
        max_pixels: int, warn: Callable[[str], None],
    ) -> DepthFrame | None:  # fmt: skip
        """The depth paired with `frame` (colour image of size (H, W)), or None after counting
        why (and saying it through `warn`, which the node throttles): no depth within
        tolerance_s of its stamp, no camera_info yet, or a depth image or camera_info that
        cannot be used."""
        if self.depth is None:
            return None
        depth = self.depth.match(stamp_ns(frame), round(tolerance_s * 1e9))
        info = self._camera_info
        if depth is None or info is None:
            self.stats.depth_unmatched += 1
            missing = (
                f"no camera_info on {self.camera_info_topic} yet"
                if info is None
                else f"no depth image on {self.depth_topic} within depth_tolerance_s="
                f"{tolerance_s:g} of its stamp"
            )
            warn(
                self.prefix(
                    f"frame segmented in 2D only: {missing} ({self.stats.depth_unmatched} "
                    "frames so far)"
                )
            )
            return None
        try:
            depth_m = depth_to_metres(depth, max_pixels)
            intrinsics = camera_info_to_intrinsics(info)
        except (ImageConversionError, CameraInfoError) as exc:
            self.stats.depth_invalid += 1
            warn(self.prefix(f"frame segmented in 2D only: {exc}"))
            return None
        if (intrinsics.height, intrinsics.width) != size:
            intrinsics = intrinsics.scaled(size[1], size[0])
        return DepthFrame(depth_m, intrinsics)
