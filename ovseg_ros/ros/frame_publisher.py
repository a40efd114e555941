"""The `ovseg_frame_publisher` node: a camera stand-in that plays a folder of images, a video, or
synthetic RGB-D frames of the toy world.

Publishes sensor_msgs/Image on `image` (or CompressedImage on `image/compressed`) at `rate_hz`,
stamped with the current time and `frame_id`, optionally looping; by default it starts only once
a subscriber is connected, so no frame is lost to discovery.

`source:=toy` plays TOY_SCENES held-out toy-world scenes (seeds from toy_world.EVAL_SEEDS.start
up, one per frame) at `width` x `height` pixels, generated as they are published (about 0.1 s a
frame at 640x480). With `depth:=true` (toy only) each frame also goes out on `depth` (16UC1
millimetres, the toy sensor's depth with noise and holes, registered to the colour image) and
`camera_info` (the colour camera, undistorted), all three with the same header; `frame_id` then
defaults to OPTICAL_FRAME, RViz2's default Fixed Frame in config/ovseg.rviz and the segmenter
launch, and waiting for subscribers waits for one on each of the three topics.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from ovseg_ros.engine.geometry import Intrinsics
from ovseg_ros.engine.toy_depth import generate_depth
from ovseg_ros.engine.toy_world import EVAL_SEEDS, generate_scene
from ovseg_ros.ros.conversions import array_to_image
from ovseg_ros.ros.runner import exit_now, run_node

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
TOY_SOURCE = "toy"
"""The `source` value that plays toy-world scenes (a folder named toy: give ./toy)."""
TOY_SCENES = 100
"""Scenes of one pass of the toy source (seeds EVAL_SEEDS.start to EVAL_SEEDS.start + 99)."""
OPTICAL_FRAME = "camera_color_optical_frame"
"""Default frame_id with depth:=true: the optical frame RViz2's default Fixed Frame names."""


@dataclass
class RgbdFrame:
    """A colour frame with its registered depth: bgr (H, W, 3) uint8 (OpenCV order), depth_mm
    (H, W) uint16 millimetres (0 = no reading), and the colour camera's intrinsics."""

    bgr: np.ndarray
    depth_mm: np.ndarray
    intrinsics: Intrinsics


def image_files(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def check_source(source: Path) -> None:
    """Raises FileNotFoundError or ValueError, naming `source`, unless it is a folder with
    images or a video file OpenCV can open."""
    if str(source) in ("", "."):
        raise ValueError("parameter source is empty: give a folder of images, a video file or toy")
    if source.is_dir():
        if not image_files(source):
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {source}")
        return
    if not source.is_file():
        raise FileNotFoundError(f"no such folder or video file: {source}")
    capture = cv2.VideoCapture(str(source))
    opened = capture.isOpened()
    capture.release()
    if not opened:
        raise ValueError(f"cannot open video {source}")


def read_frames(source: Path) -> Iterator[np.ndarray | str]:
    """Frames of a folder of images or a video file (see check_source), as (H, W, 3) uint8
    BGR (OpenCV order); an image file that cannot be read yields the reason instead."""
    if source.is_dir():
        for path in image_files(source):
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            yield f"cannot read image {path}" if frame is None else frame
        return
    capture = cv2.VideoCapture(str(source))
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


def toy_frames(width: int, height: int) -> Iterator[RgbdFrame]:
    """The TOY_SCENES held-out toy scenes, width x height pixels, with the toy sensor's depth."""
    for seed in range(EVAL_SEEDS.start, EVAL_SEEDS.start + TOY_SCENES):
        scene = generate_scene(seed, height, width)
        depth = generate_depth(scene)
        bgr = cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR)
        yield RgbdFrame(bgr, depth.sensor_mm, depth.intrinsics)


def camera_info(intrinsics: Intrinsics, header: Header) -> CameraInfo:
    """The CameraInfo of an undistorted pinhole camera: K from `intrinsics` (pixels),
    plumb_bob with zero D, identity R, P = [K | 0]."""
    fx, fy, cx, cy = intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy
    return CameraInfo(
        header=header,
        width=intrinsics.width,
        height=intrinsics.height,
        distortion_model="plumb_bob",
        d=[0.0] * 5,
        k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
        r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        p=[fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
    )


class FramePublisher(Node):
    """Publishes the frames of `source` at `rate_hz`."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__("ovseg_frame_publisher", **node_kwargs)
        source = str(self.declare_parameter("source", "").value)
        self.toy = source == TOY_SOURCE
        self.source = Path(source)
        rate_hz = float(self.declare_parameter("rate_hz", 2.0).value)
        self.loop = bool(self.declare_parameter("loop", True).value)
        self.width = int(self.declare_parameter("width", 640).value)
        self.height = int(self.declare_parameter("height", 480).value)
        self.depth = bool(self.declare_parameter("depth", False).value)
        default_frame = OPTICAL_FRAME if self.depth else "camera"
        self.frame_id = str(self.declare_parameter("frame_id", default_frame).value)
        self.encoding = str(self.declare_parameter("encoding", "rgb8").value)
        self.compressed = bool(self.declare_parameter("compressed", False).value)
        self.wait_for_subscriber = bool(self.declare_parameter("wait_for_subscriber", True).value)
        if self.encoding not in ("rgb8", "bgr8"):
            raise ValueError(f"encoding must be rgb8 or bgr8, got {self.encoding!r}")
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        if self.depth and not self.toy:
            raise ValueError(
                f"depth:=true needs source:={TOY_SOURCE} (a folder or a video has no depth), "
                f"got source {source!r}"
            )
        if self.toy and (self.width < 1 or self.height < 1):
            raise ValueError(f"width and height must be >= 1, got {self.width}x{self.height}")
        if not self.toy:
            check_source(self.source)
        self._frames = self._open_frames()
        self.published = 0
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        if self.compressed:
            self.publisher = self.create_publisher(CompressedImage, "image/compressed", qos)
        else:
            self.publisher = self.create_publisher(Image, "image", qos)
        self.depth_publisher = self.create_publisher(Image, "depth", qos) if self.depth else None
        self.info_publisher = (
            self.create_publisher(CameraInfo, "camera_info", qos) if self.depth else None
        )
        self.timer = self.create_timer(1.0 / rate_hz, self._publish_next)

    def _open_frames(self) -> Iterator[np.ndarray | str | RgbdFrame]:
        """The frames of one pass over the source, from its start."""
        if self.toy:
            return toy_frames(self.width, self.height)
        return read_frames(self.source)

    def _next_frame(self) -> np.ndarray | str | RgbdFrame | None:
        frame = next(self._frames, None)
        if frame is None and self.loop and self.published > 0:
            self._frames = self._open_frames()
            frame = next(self._frames, None)
        return frame

    def _subscribed(self) -> bool:
        """Whether every topic published has a subscriber."""
        publishers = [self.publisher, self.depth_publisher, self.info_publisher]
        return all(p.get_subscription_count() > 0 for p in publishers if p is not None)

    def _publish_next(self) -> None:
        if self.wait_for_subscriber and not self._subscribed():
            return
        frame = self._next_frame()
        if frame is None:
            self.get_logger().info(f"published all {self.published} frames of {self.source}")
            self.timer.cancel()
            return
        if isinstance(frame, str):
            self.get_logger().warning(f"skipped: {frame}")
            return
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.frame_id)
        if isinstance(frame, RgbdFrame):
            if self.depth:
                self._publish_depth(frame, header)
            frame = frame.bgr
        self._publish_image(frame, header)
        self.published += 1

    def _publish_depth(self, frame: RgbdFrame, header: Header) -> None:
        """Publishes the frame's camera_info and depth (called before its image goes out)."""
        self.info_publisher.publish(camera_info(frame.intrinsics, header))
        self.depth_publisher.publish(array_to_image(frame.depth_mm, "16UC1", header))

    def _publish_image(self, frame: np.ndarray, header: Header) -> None:
        """Publishes a (H, W, 3) uint8 BGR frame as `encoding`, or as JPEG with compressed."""
        if self.compressed:
            ok, data = cv2.imencode(".jpg", frame)
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            self.publisher.publish(
                CompressedImage(header=header, format="jpeg", data=data.tobytes())
            )
        elif self.encoding == "rgb8":
            self.publisher.publish(array_to_image(frame[:, :, ::-1], "rgb8", header))
        else:
            self.publisher.publish(array_to_image(frame, "bgr8", header))

    def stop(self, timeout_s: float) -> bool:
        """Stops publishing (the timer runs on the executor, which has stopped): nothing to
        wait for."""
        self.timer.cancel()
        return True


def main(argv: list[str] | None = None) -> int:
    """Console entry point: `ovseg_frame_publisher --ros-args -p source:=FOLDER_OR_VIDEO` (or
    `-p source:=toy -p depth:=true`)."""
    return run_node(FramePublisher, "ovseg_frame_publisher", argv)


if __name__ == "__main__":
    exit_now(main())
