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

`--bag RECORDING --topic T` replays instead the image topic T of a ROS 2 bag (BagPublisher): its
messages go out as recorded (header included) at their recorded pace, with /clock from the
recording's time, so that nodes with use_sim_time:=true see the frames as fresh.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import cv2
import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from ovseg_ros.engine.geometry import Intrinsics
from ovseg_ros.engine.toy_depth import generate_depth
from ovseg_ros.engine.toy_world import EVAL_SEEDS, generate_scene
from ovseg_ros.recordings import Recording, RecordingError, open_recording
from ovseg_ros.ros.conversions import array_to_image
from ovseg_ros.ros.runner import exit_now, run_node, start_error_line

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
TOY_SOURCE = "toy"
"""The `source` value that plays toy-world scenes (a folder named toy: give ./toy)."""
TOY_SCENES = 100
"""Scenes of one pass of the toy source (seeds EVAL_SEEDS.start to EVAL_SEEDS.start + 99)."""
OPTICAL_FRAME = "camera_color_optical_frame"
"""Default frame_id with depth:=true: the optical frame RViz2's default Fixed Frame names."""
PROGRAM = "ovseg_frame_publisher"
CLOCK_PERIOD_S = 0.025
"""Longest time between two /clock messages of a replay (40 Hz, as `ros2 bag play --clock`)."""
CLOCK_LEAD_S = 0.05
"""With --loop, /clock jumps back this long (at most half a frame interval) before the next
pass's first frame, so that nodes on /clock have the jump before that frame."""
SUBSCRIBER_POLL_S = 0.1
"""How often a replay waiting for a subscriber looks again."""
LOOP_INTERVAL_NS = 1_000_000_000
"""Recording time between the passes of a looping replay of a single frame."""


@dataclass(frozen=True)
class Replay:
    """What `--bag` asks for: the image topic `topic` of the recording `bag` (a bag folder, or
    one .mcap or .db3 file), at `rate` times its recorded pace, once or with `loop`, published
    on `remap_to` when not empty."""

    bag: Path
    topic: str
    rate: float = 1.0
    loop: bool = False
    remap_to: str = ""


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
        super().__init__(PROGRAM, **node_kwargs)
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


class BagPublisher(Node):
    """Replays one image topic of a recording (see Replay) at its recorded pace, on `image`
    (`image/compressed` for CompressedImage) unless `remap_to` names another topic, and
    publishes /clock from the recording's time: the bag timestamp of each frame as it goes out,
    and every CLOCK_PERIOD_S in between. The messages go out as recorded (serialized bytes), so
    their header (stamp, frame_id) is the recorded one. With `loop` each pass starts over from
    the first frame and /clock jumps back to its time.

    Frames are read and published on a thread of the node's own, which sleeps until each frame
    is due; `wait_for_subscriber` (parameter, default true) holds the first frame until the
    image topic has a subscriber."""

    def __init__(self, replay: Replay, **node_kwargs) -> None:
        super().__init__(PROGRAM, **node_kwargs)
        self.replay = replay
        self.wait_for_subscriber = bool(self.declare_parameter("wait_for_subscriber", True).value)
        with open_recording(replay.bag) as recording:
            frames = recording.frame_count(replay.topic)  # RecordingError unless an image topic
            compressed = recording.topics()[replay.topic] == "sensor_msgs/msg/CompressedImage"
        if frames == 0:
            raise RecordingError(f"{replay.bag} has no frames of {replay.topic}")
        message_type = CompressedImage if compressed else Image
        topic = replay.remap_to or ("image/compressed" if compressed else "image")
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.publisher = self.create_publisher(message_type, topic, qos)
        self.clock_publisher = self.create_publisher(
            Clock, "/clock", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        )
        self.published = 0
        self.get_logger().info(
            f"replaying {frames} frames of {replay.topic} in {replay.bag} on "
            f"{self.publisher.topic_name} at {replay.rate:g}x, with /clock"
            + (", looping" if replay.loop else "")
            + (", once it has a subscriber" if self.wait_for_subscriber else "")
        )
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._play, name="bag_replay", daemon=True)
        self._thread.start()

    def _play(self) -> None:
        """The replay thread: waits for a subscriber, then plays the topic once, or until
        stopped with `loop`."""
        while self.wait_for_subscriber and self.publisher.get_subscription_count() == 0:
            if self._stopping.wait(SUBSCRIBER_POLL_S):
                return
        try:
            with open_recording(self.replay.bag) as recording:
                self._play_passes(recording)
        except RecordingError as exc:
            self.get_logger().error(f"replay stopped: {exc}")

    def _play_passes(self, recording: Recording) -> None:
        """Plays the recording once, or with `loop` pass after pass until stopped."""
        while self._play_once(recording):
            if not self.replay.loop:
                self.get_logger().info(
                    f"published all {self.published} frames of {self.replay.topic} in "
                    f"{self.replay.bag}"
                )
                return

    def _play_once(self, recording: Recording) -> bool:
        """Plays every frame of the topic once, the first now and the others at the recorded
        pace scaled by 1/rate. With `loop` it then waits one mean frame interval (one
        LOOP_INTERVAL_NS for a single frame), /clock running on past the last frame, so that
        the next pass keeps the pace. False when stopped on the way."""
        start_s = start_ns = last_ns = None
        count = 0
        for frame in recording.frames(self.replay.topic):
            if start_ns is None:
                start_s, start_ns = time.monotonic(), frame.timestamp_ns
            due_s = start_s + (frame.timestamp_ns - start_ns) * 1e-9 / self.replay.rate
            if not self._clock_until(due_s, start_s, start_ns):
                return False
            self._publish_clock(frame.timestamp_ns)
            self.publisher.publish(frame.data)
            self.published += 1
            count += 1
            last_ns = frame.timestamp_ns
        if count == 0:
            raise RecordingError(f"{self.replay.bag} has no frames of {self.replay.topic}")
        if not self.replay.loop:
            return not self._stopping.is_set()
        interval_ns = (last_ns - start_ns) // (count - 1) if count > 1 else LOOP_INTERVAL_NS
        next_s = start_s + (last_ns + interval_ns - start_ns) * 1e-9 / self.replay.rate
        lead_s = min(CLOCK_LEAD_S, interval_ns * 1e-9 / self.replay.rate / 2)
        if not self._clock_until(next_s - lead_s, start_s, start_ns):
            return False
        # The next pass's time a moment before its first frame: a node on /clock then has the
        # jump back before that frame, which would look as old as the recording otherwise.
        self._publish_clock(start_ns)
        return not self._stopping.wait(max(0.0, next_s - time.monotonic()))

    def _clock_until(self, due_s: float, start_s: float, start_ns: int) -> bool:
        """Publishes /clock every CLOCK_PERIOD_S until the monotonic time due_s, the recording's
        time running from start_ns at start_s at `rate` times real time; False when stopped."""
        while not self._stopping.is_set():
            now_s = time.monotonic()
            if now_s >= due_s:
                return True
            self._publish_clock(start_ns + int((now_s - start_s) * self.replay.rate * 1e9))
            self._stopping.wait(min(due_s - now_s, CLOCK_PERIOD_S))
        return False

    def _publish_clock(self, nanoseconds: int) -> None:
        self.clock_publisher.publish(Clock(clock=Time(nanoseconds=nanoseconds).to_msg()))

    def stop(self, timeout_s: float) -> bool:
        """Stops the replay thread within timeout_s; False when it is still busy."""
        self._stopping.set()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


def ros_free_args(argv: list[str]) -> list[str]:
    """The arguments of a command line (program name excluded) outside its ROS arguments, which
    run from each `--ros-args` to the next `--` or the end."""
    free: list[str] = []
    in_ros_args = False
    for arg in argv[1:]:
        if arg == "--ros-args":
            in_ros_args = True
        elif arg == "--" and in_ros_args:
            in_ros_args = False
        elif not in_ros_args:
            free.append(arg)
    return free


class _ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that raises ValueError on bad arguments instead of printing usage and
    exiting, so that main() reports them as its one start-error line."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(f"{message} (see {self.prog} --help)")


def parse_replay(argv: list[str]) -> Replay | None:
    """The Replay asked for by a command line, None without --bag; ValueError when the
    arguments outside --ros-args are not valid."""
    parser = _ArgumentParser(
        prog=PROGRAM,
        description="Plays a folder of images, a video or toy-world frames (ROS parameters, "
        "-p source:=...), or replays an image topic of a ROS 2 bag (--bag, --topic) with "
        "/clock.",
        epilog="ROS arguments go after --ros-args, e.g. --ros-args -p source:=toy, or -r "
        "image:=/camera/image_raw to publish elsewhere.",
    )
    parser.add_argument("--bag", type=Path, help="a bag folder, or one .mcap or .db3 file")
    parser.add_argument("--topic", help="the image topic to replay (Image or CompressedImage)")
    parser.add_argument("--rate", type=float, help="replay speed factor (default 1.0)")
    parser.add_argument("--loop", action="store_true", help="start over at the end")
    parser.add_argument(
        "--remap-to",
        metavar="TOPIC",
        help="publish on TOPIC instead of image (image/compressed for CompressedImage)",
    )
    args = parser.parse_args(ros_free_args(argv))
    if args.bag is None:
        if args.topic is not None or args.rate is not None or args.loop or args.remap_to:
            raise ValueError(
                "--topic, --rate, --loop and --remap-to go with --bag RECORDING (a folder, video "
                "or toy source takes -p rate_hz:=... and -p loop:=...)"
            )
        return None
    if not args.topic:
        raise ValueError(f"--bag {args.bag} needs --topic, the image topic to replay")
    rate = 1.0 if args.rate is None else args.rate
    if not rate > 0:
        raise ValueError(f"--rate must be > 0, got {rate:g}")
    return Replay(args.bag, args.topic, rate, args.loop, args.remap_to or "")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: `ovseg_frame_publisher --ros-args -p source:=FOLDER_OR_VIDEO` (or
    `-p source:=toy -p depth:=true`), or `ovseg_frame_publisher --bag RECORDING --topic T
    [--rate R] [--loop] [--remap-to TOPIC]`."""
    argv = sys.argv if argv is None else argv
    try:
        replay = parse_replay(argv)
    except ValueError as exc:
        print(start_error_line(PROGRAM, exc), file=sys.stderr, flush=True)
        return 1
    if replay is None:
        return run_node(FramePublisher, PROGRAM, argv)
    return run_node(lambda: BagPublisher(replay), PROGRAM, argv)


if __name__ == "__main__":
    exit_now(main())
