"""The `ovseg_frame_publisher` node: a camera stand-in that plays a folder of images or a video.

Publishes sensor_msgs/Image on `image` (or CompressedImage on `image/compressed`) at `rate_hz`,
stamped with the current time and `frame_id`, optionally looping; by default it starts only once
a subscriber is connected, so no frame is lost to discovery.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from ovseg_ros.ros.conversions import array_to_image
from ovseg_ros.ros.runner import exit_now, run_node

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def image_files(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def check_source(source: Path) -> None:
    """Raises FileNotFoundError or ValueError, naming `source`, unless it is a folder with
    images or a video file OpenCV can open."""
    if str(source) in ("", "."):
        raise ValueError("parameter source is empty: give a folder of images or a video file")
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


class FramePublisher(Node):
    """Publishes the frames of `source` at `rate_hz`."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__("ovseg_frame_publisher", **node_kwargs)
        self.source = Path(self.declare_parameter("source", "").value)
        rate_hz = float(self.declare_parameter("rate_hz", 2.0).value)
        self.loop = bool(self.declare_parameter("loop", True).value)
        self.frame_id = str(self.declare_parameter("frame_id", "camera").value)
        self.encoding = str(self.declare_parameter("encoding", "rgb8").value)
        self.compressed = bool(self.declare_parameter("compressed", False).value)
        self.wait_for_subscriber = bool(self.declare_parameter("wait_for_subscriber", True).value)
        if self.encoding not in ("rgb8", "bgr8"):
            raise ValueError(f"encoding must be rgb8 or bgr8, got {self.encoding!r}")
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        check_source(self.source)
        self._frames = read_frames(self.source)
        self.published = 0
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        if self.compressed:
            self.publisher = self.create_publisher(CompressedImage, "image/compressed", qos)
        else:
            self.publisher = self.create_publisher(Image, "image", qos)
        self.timer = self.create_timer(1.0 / rate_hz, self._publish_next)

    def _next_frame(self) -> np.ndarray | str | None:
        frame = next(self._frames, None)
        if frame is None and self.loop and self.published > 0:
            self._frames = read_frames(self.source)
            frame = next(self._frames, None)
        return frame

    def _publish_next(self) -> None:
        if self.wait_for_subscriber and self.publisher.get_subscription_count() == 0:
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
        self.published += 1

    def stop(self, timeout_s: float) -> bool:
        """Stops publishing (the timer runs on the executor, which has stopped): nothing to
        wait for."""
        self.timer.cancel()
        return True


def main(argv: list[str] | None = None) -> int:
    """Console entry point: `ovseg_frame_publisher --ros-args -p source:=FOLDER_OR_VIDEO`."""
    return run_node(FramePublisher, "ovseg_frame_publisher", argv)


if __name__ == "__main__":
    exit_now(main())
