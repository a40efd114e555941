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
"""Depth images kept per camera for colour frames that arrive after their depth (a third of a
second at 30 Hz)."""

MAX_EXPECTED = 8
"""Colour frames per camera that can wait for their depth at once: the pending frame, the frames
in flight (two with `pipeline`) and a margin; the oldest is forgotten beyond it."""


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


class DepthPairing:
    """Pairs one camera's depth images with its colour frames by stamp; thread-safe.

    The newest DEPTH_BUFFER depth images are kept for colour frames that arrive after their
    depth. From the moment a colour frame arrives (expect) until it is published (pop), the
    depth image nearest its stamp within the tolerance is held for it, however many depth images
    arrive in between: a frame that waits or is segmented for seconds keeps its depth.
    """

    def __init__(self) -> None:
        self._recent: collections.deque[Image] = collections.deque(maxlen=DEPTH_BUFFER)
        self._expected: dict[int, Image | None] = {}
        self._tolerance_ns = 0
        self._lock = threading.Lock()

    def _nearer(self, depth: Image, best: Image | None, stamp: int) -> bool:
        """Whether `depth` is within the tolerance of `stamp` and nearer to it than `best`."""
        gap = abs(stamp_ns(depth) - stamp)
        return gap <= self._tolerance_ns and (best is None or gap < abs(stamp_ns(best) - stamp))

    def add(self, depth: Image) -> None:
        """A depth image arrived: kept, and held for every expected frame it is nearest to."""
        with self._lock:
            self._recent.append(depth)
            for stamp, best in self._expected.items():
                if self._nearer(depth, best, stamp):
                    self._expected[stamp] = depth

    def expect(self, stamp: int, tolerance_ns: int) -> None:
        """A colour frame stamped `stamp` (ns) arrived: hold the nearest depth image within
        tolerance_ns for it, from the kept ones now and from those that arrive later."""
        with self._lock:
            self._tolerance_ns = tolerance_ns
            best = None
            for depth in self._recent:
                if self._nearer(depth, best, stamp):
                    best = depth
            self._expected[stamp] = best
            while len(self._expected) > MAX_EXPECTED:
                del self._expected[next(iter(self._expected))]

    def pop(self, stamp: int) -> Image | None:
        """The depth image held for the colour frame stamped `stamp`, which stops waiting."""
        with self._lock:
            return self._expected.pop(stamp, None)


@dataclass
class DepthFrame:
    """Depth paired with a colour frame: (h, w) float32 metres (0 = no depth) and the colour
    camera's intrinsics at the colour image's size."""

    depth_m: np.ndarray
    intrinsics: Intrinsics


ASPECT_TOLERANCE = 0.01
"""Largest relative difference of aspect ratio (width / height) between the colour image and its
depth image or camera_info: beyond it they are not views of the same image (another camera's
topic, a cropped stream) and the frame stays 2D."""


def same_aspect(size: tuple[int, int], other: tuple[int, int]) -> bool:
    """Whether two (height, width) sizes have the same aspect ratio within ASPECT_TOLERANCE."""
    ratio, other_ratio = size[1] / size[0], other[1] / other[0]
    return abs(ratio - other_ratio) <= ASPECT_TOLERANCE * other_ratio


class CameraStream:
    """Subscriptions, newest frame and publishers of one camera.

    topics: the camera's input topics (CameraTopics); outputs: the prefix of its output topics
    ("~" for the node's own, else NAMESPACE/<node name>); label: the camera's namespace ("" for
    a node's only camera), which names its logger (<node>.<label>); notify: the node's condition,
    notified on every new frame; tolerance_s: returns depth_tolerance_s in force.
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
        tolerance_s: Callable[[], float],
    ) -> None:
        self.topics = topics
        self.stats = FrameStats()
        self.logger = (
            node.get_logger().get_child(label.strip("/").replace("/", "_"))
            if label
            else node.get_logger()
        )
        self.pending: Image | CompressedImage | None = None
        self.last_start = -float("inf")
        self.last_arrival: float | None = None
        """time.monotonic() when the newest frame arrived; None before the first."""
        self.silent = False
        """Whether the node has said that this camera stopped (check_input), until a frame
        comes."""
        self.noted_ahead = False
        """Whether the node has said that this camera's frames are ahead of its clock."""
        self._notify = notify
        self._tolerance_s = tolerance_s
        self._camera_info: CameraInfo | None = None
        self.depth = DepthPairing() if topics.has_depth else None
        self.labels_pub = node.create_publisher(Image, f"{outputs}/labels", 1)
        self.overlay_pub = node.create_publisher(Image, f"{outputs}/overlay", 1)
        self.result_pub = node.create_publisher(SegmentationResult, f"{outputs}/result", 1)
        self.points_pub = (
            node.create_publisher(PointCloud2, f"{outputs}/points", 1) if topics.has_depth else None
        )
        if compressed:
            image_sub = node.create_subscription(
                CompressedImage, f"{topics.image}/compressed", self._on_image, input_qos
            )
        else:
            image_sub = node.create_subscription(Image, topics.image, self._on_image, input_qos)
        self.image_topic = image_sub.topic_name
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

    def _on_image(self, msg: Image | CompressedImage) -> None:
        """Keeps only the newest frame (and holds its depth); the node's worker takes it from
        there. Says so when frames return after check_input reported the camera silent."""
        if self.depth is not None:
            self.depth.expect(stamp_ns(msg), round(self._tolerance_s() * 1e9))
        now = time.monotonic()
        with self._notify:
            returned_after = now - self.last_arrival if self.silent else None
            self.silent = False
            self.last_arrival = now
            self.stats.received += 1
            if self.pending is not None:
                self.stats.replaced += 1
                if self.depth is not None and stamp_ns(self.pending) != stamp_ns(msg):
                    self.depth.pop(stamp_ns(self.pending))
            self.pending = msg
            self._notify.notify()
        if returned_after is not None:
            self.logger.info(f"frames on {self.image_topic} again after {returned_after:.1f} s")

    def check_input(self, timeout_s: float) -> None:
        """Says once that the camera stopped when it has sent frames but none for more than
        timeout_s seconds (time.monotonic(); 0 = never)."""
        now = time.monotonic()
        with self._notify:
            if timeout_s <= 0 or self.silent or self.last_arrival is None:
                return
            silence = now - self.last_arrival
            if silence <= timeout_s:
                return
            self.silent = True
        self.logger.warning(
            f"no frame for {silence:.1f} s on {self.image_topic} (input_timeout_s={timeout_s:g}); "
            "waiting for the camera"
        )

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
        self, frame: Image | CompressedImage, size: tuple[int, int], max_pixels: int
    ) -> DepthFrame | None:
        """The depth paired with `frame` (colour image of size (H, W)), or None after counting
        why and saying it in a warning (at most every 5 s per camera and cause): no depth within
        depth_tolerance_s of its stamp, no camera_info yet, or a depth image or camera_info that
        cannot be used."""
        if self.depth is None:
            return None
        depth = self.depth.pop(stamp_ns(frame))
        info = self._camera_info
        if depth is None or info is None:
            self.stats.depth_unmatched += 1
            missing = (
                f"no camera_info on {self.camera_info_topic} yet"
                if info is None
                else f"no depth image on {self.depth_topic} within depth_tolerance_s="
                f"{self._tolerance_s():g} of its stamp"
            )
            self.logger.warning(
                f"frame segmented in 2D only: {missing} ({self.stats.depth_unmatched} frames so "
                "far)",
                throttle_duration_sec=5.0,
            )
            return None
        try:
            return self._depth_frame(depth, info, size, max_pixels)
        except (ImageConversionError, CameraInfoError) as exc:
            self.count_unusable_depth(exc)
            return None

    def count_unusable_depth(self, reason: Exception) -> None:
        """Counts a frame whose depth or camera_info cannot be used and says why (at most every
        5 s)."""
        self.stats.depth_invalid += 1
        self.logger.warning(
            f"frame segmented in 2D only: {reason} ({self.stats.depth_invalid} frames so far)",
            throttle_duration_sec=5.0,
        )

    def _depth_frame(
        self, depth: Image, info: CameraInfo, size: tuple[int, int], max_pixels: int
    ) -> DepthFrame:
        """The depth image in metres and the intrinsics at the colour size (H, W); raises
        ImageConversionError or CameraInfoError saying why they cannot be used."""
        depth_m = depth_to_metres(depth, max_pixels)
        intrinsics = camera_info_to_intrinsics(info)
        for what, other in (
            ("depth image", depth_m.shape),
            ("camera_info", (intrinsics.height, intrinsics.width)),
        ):
            if not same_aspect(other, size):
                raise ImageConversionError(
                    f"the {what} is {other[1]}x{other[0]} but the colour image {size[1]}x"
                    f"{size[0]}, another aspect ratio: not registered to it"
                )
        if (intrinsics.height, intrinsics.width) != size:
            intrinsics = intrinsics.scaled(size[1], size[0])
        return DepthFrame(depth_m, intrinsics)
