"""`ovseg_frame_publisher --bag`: an image topic of a ROS 2 bag replayed at its recorded pace,
with /clock from the recording's time."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO_ROOT
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import spin_until
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image
from tiny_model import TINY_CHECKPOINT

from ovseg_ros.engine import toy_world
from ovseg_ros.msg import SegmentationResult
from ovseg_ros.ros.frame_publisher import BagPublisher, Replay, parse_replay
from ovseg_ros.ros.segmenter_node import SegmenterNode

TOPIC = "/cam/image_raw"
FRAME_ID = "recorded_cam"
PERIOD_NS = 250_000_000
"""Time between two recorded frames."""
STAMP_LAG_NS = 7_000_000
"""How much earlier than its bag timestamp a frame is stamped (the driver's latency)."""
RECORDED_AGO_NS = 3600 * 10**9
"""The recordings are an hour old."""
FIRST_SEED = 1_000_000
"""Toy-world seed of a recording's first frame (then one more per frame)."""
TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


def _stamp(nanoseconds: int):
    return TYPESTORE.types["builtin_interfaces/msg/Time"](
        sec=nanoseconds // 10**9, nanosec=nanoseconds % 10**9
    )


def _scene(index: int) -> np.ndarray:
    """The 64x48 RGB toy-world frame number `index` of a recording."""
    return toy_world.generate_scene(FIRST_SEED + index, 48, 64).image


def _image_message(rgb: np.ndarray, stamp_ns: int, compressed: bool):
    """A rosbags sensor_msgs Image (rgb8) or CompressedImage (JPEG) of `rgb`, and its type."""
    types = TYPESTORE.types
    header = types["std_msgs/msg/Header"](stamp=_stamp(stamp_ns), frame_id=FRAME_ID)
    if compressed:
        ok, jpeg = cv2.imencode(".jpg", rgb[:, :, ::-1])
        assert ok
        message = types["sensor_msgs/msg/CompressedImage"](
            header=header, format="rgb8; jpeg compressed bgr8", data=jpeg.reshape(-1)
        )
        return message, "sensor_msgs/msg/CompressedImage"
    height, width, _ = rgb.shape
    message = types["sensor_msgs/msg/Image"](
        header=header, height=height, width=width, encoding="rgb8", is_bigendian=0,
        step=3 * width, data=rgb.reshape(-1),
    )  # fmt: skip
    return message, "sensor_msgs/msg/Image"


def write_recording(
    path: Path,
    storage: StoragePlugin,
    compressed: bool = False,
    frames: int = 5,
    period_ns: int = PERIOD_NS,
) -> list[int]:
    """Writes a bag of `frames` toy-world frames (64x48) on TOPIC, one every period_ns from an
    hour ago, each stamped STAMP_LAG_NS before its bag timestamp, plus a std_msgs/String topic
    /chatter; returns the frames' bag timestamps (ns)."""
    start_ns = time.time_ns() - RECORDED_AGO_NS
    times = [start_ns + index * period_ns for index in range(frames)]
    with Writer(path, version=9, storage_plugin=storage) as writer:
        chatter = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=TYPESTORE)
        connection = None
        for index, bag_ns in enumerate(times):
            rgb = _scene(index)
            message, msgtype = _image_message(rgb, bag_ns - STAMP_LAG_NS, compressed)
            if connection is None:
                connection = writer.add_connection(TOPIC, msgtype, typestore=TYPESTORE)
            writer.write(connection, bag_ns, TYPESTORE.serialize_cdr(message, msgtype))
            text = TYPESTORE.types["std_msgs/msg/String"](data=f"frame {index}")
            writer.write(chatter, bag_ns, TYPESTORE.serialize_cdr(text, "std_msgs/msg/String"))
    return times


def _ns(stamp) -> int:
    return stamp.sec * 10**9 + stamp.nanosec


class Listener:
    """A test node that records the frames of `topic` and the /clock messages it receives, each
    with the time its publisher sent it (ns, system clock)."""

    def __init__(self, context, topic: str, message_type: type) -> None:
        self.node = Node("replay_listener", context=context)
        self.frames: list[tuple[Image | CompressedImage, int]] = []
        self.clock: list[tuple[int, int]] = []
        self.node.create_subscription(
            message_type,
            topic,
            lambda msg, info: self.frames.append((msg, info["source_timestamp"])),
            RELIABLE,
        )
        self.node.create_subscription(
            Clock,
            "/clock",
            lambda msg, info: self.clock.append((_ns(msg.clock), info["source_timestamp"])),
            RELIABLE,
        )
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)

    def wait_for_frames(self, count: int, timeout_s: float = 30.0) -> bool:
        return spin_until(self.executor, lambda: len(self.frames) >= count, timeout_s)

    def stamps(self) -> list[int]:
        """The header stamps of the frames received, in order."""
        return [_ns(frame.header.stamp) for frame, _ in self.frames]

    def close(self) -> None:
        self.node.destroy_node()


@pytest.mark.parametrize(
    ("storage", "compressed", "rate", "recording"),
    [(StoragePlugin.MCAP, False, 1.0, "bag"), (StoragePlugin.SQLITE3, True, 2.0, "bag/bag.db3")],
    ids=["mcap-folder-raw", "db3-file-compressed-rate-2"],
)
def test_frames_go_out_as_recorded_at_the_recorded_pace_with_clock(
    ros_context, tmp_path, storage, compressed, rate, recording
):
    times = write_recording(tmp_path / "bag", storage, compressed)
    message_type = CompressedImage if compressed else Image
    listener = Listener(ros_context, "/image/compressed" if compressed else "/image", message_type)
    publisher = BagPublisher(Replay(tmp_path / recording, TOPIC, rate=rate), context=ros_context)
    try:
        assert listener.wait_for_frames(len(times))
        spin_until(listener.executor, lambda: False, timeout_s=0.3)
    finally:
        assert publisher.stop(1.0)
        publisher.destroy_node()
        listener.close()
    assert listener.stamps() == [t - STAMP_LAG_NS for t in times]
    assert all(frame.header.frame_id == FRAME_ID for frame, _ in listener.frames)
    if not compressed:
        pixels = [bytes(frame.data) for frame, _ in listener.frames]
        assert pixels == [_scene(index).tobytes() for index in range(len(times))]
    sent = [source_ns for _, source_ns in listener.frames]
    span_s = (times[-1] - times[0]) * 1e-9 / rate
    assert (sent[-1] - sent[0]) * 1e-9 == pytest.approx(span_s, abs=0.1)
    # /clock: the recording's time, advancing between frames and at the frames' pace
    clock = [clock_ns for clock_ns, _ in listener.clock]
    assert clock == sorted(clock) and clock[-1] == times[-1] and clock[0] >= times[0]
    assert len(clock) >= 20 * span_s
    for clock_ns, source_ns in listener.clock:
        expected_ns = times[0] + (source_ns - sent[0]) * rate
        assert abs(clock_ns - expected_ns) * 1e-9 < 0.05 * rate


def test_loop_starts_over_at_the_pace_and_the_clock_jumps_back(ros_context, tmp_path):
    times = write_recording(tmp_path / "bag", StoragePlugin.MCAP, frames=3)
    listener = Listener(ros_context, "/image", Image)
    publisher = BagPublisher(
        Replay(tmp_path / "bag", TOPIC, rate=2.0, loop=True), context=ros_context
    )
    try:
        assert listener.wait_for_frames(8)
    finally:
        assert publisher.stop(1.0)
        publisher.destroy_node()
        listener.close()
    recorded = [t - STAMP_LAG_NS for t in times]
    assert listener.stamps()[:8] == (recorded * 3)[:8]
    # one frame interval between the passes too: PERIOD_NS / rate
    sent = [source_ns for _, source_ns in listener.frames[:8]]
    assert list(np.diff(sent) * 1e-9) == pytest.approx([PERIOD_NS * 1e-9 / 2] * 7, abs=0.09)
    # /clock runs on past the last frame until the next pass, then jumps back to the first
    clock = [clock_ns for clock_ns, _ in listener.clock]
    jumps = [clock[i] for i in range(1, len(clock)) if clock[i] < clock[i - 1]]
    assert len(jumps) >= 2 and set(jumps) == {times[0]}
    assert min(clock) >= times[0] and times[-1] < max(clock) <= times[-1] + PERIOD_NS


@pytest.mark.slow
def test_a_segmenter_on_sim_time_answers_every_frame_of_an_old_looping_recording(
    ros_context, tmp_path
):
    """An hour-old recording, looping, into a segmenter with use_sim_time and the default
    max_age_s: its frames are answered, with their recorded headers, across the clock's jumps;
    none is dropped as stale."""
    times = write_recording(tmp_path / "bag", StoragePlugin.MCAP, frames=3, period_ns=500_000_000)
    settings = {
        "model": "ovseg-tiny-clip",
        "pretrained": "",
        "checkpoint": str(TINY_CHECKPOINT),
        "device": "cpu",
        "vocabulary": toy_world.shape_classes(),
        "prompt_templates": ["single"],
        "input_reliability": "reliable",
        "use_sim_time": True,
    }
    segmenter = SegmenterNode(
        context=ros_context,
        parameter_overrides=[Parameter(name, value=value) for name, value in settings.items()],
    )
    assert segmenter.params.max_age_s == 1.0
    listener = Node("result_listener", context=ros_context)
    results: list[SegmentationResult] = []
    listener.create_subscription(
        SegmentationResult, "/ovseg_segmenter/result", results.append, RELIABLE
    )
    executor = MultiThreadedExecutor(num_threads=2, context=ros_context)
    executor.add_node(segmenter)
    executor.add_node(listener)
    publisher = BagPublisher(Replay(tmp_path / "bag", TOPIC, loop=True), context=ros_context)
    try:
        assert spin_until(executor, lambda: len(results) >= 7, timeout_s=60.0), segmenter.stats
    finally:
        assert publisher.stop(1.0)
        publisher.destroy_node()
        executor.shutdown(timeout_sec=1.0)
        segmenter.destroy_node()
        listener.destroy_node()
    recorded = [t - STAMP_LAG_NS for t in times]
    stamps = [_ns(result.header.stamp) for result in results]
    stats = segmenter.stats
    # Every recorded frame answered, across the loops; none dropped as stale or lost: a frame
    # only misses an answer when a newer one replaced it while the node was busy (counted).
    assert set(stamps) == set(recorded), (stamps, stats)
    assert stats.processed + stats.replaced >= stats.received - 1, stats
    assert segmenter.stats.dropped_stale == 0


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ovseg_ros.ros.frame_publisher", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_the_program_replays_on_a_renamed_topic_and_stops_quietly(ros_context, tmp_path):
    times = write_recording(tmp_path / "bag", StoragePlugin.SQLITE3)
    listener = Listener(ros_context, "/front/image_raw", Image)
    process = _start(
        "--bag", str(tmp_path / "bag"), "--topic", TOPIC, "--remap-to", "/front/image_raw",
        "--rate", "2", "--ros-args", "-r", "__node:=bag_replay",
    )  # fmt: skip
    try:
        assert listener.wait_for_frames(len(times), timeout_s=60.0)
        assert listener.stamps() == [t - STAMP_LAG_NS for t in times]
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        listener.close()
    assert process.returncode == 0, output
    bag = tmp_path / "bag"
    started, finished = output.strip().splitlines()
    assert started.startswith("[INFO]") and started.endswith(
        f"[bag_replay]: replaying 5 frames of {TOPIC} in {bag} on /front/image_raw at 2x, with "
        "/clock, once it has a subscriber"
    ), output
    assert finished.startswith("[INFO]") and finished.endswith(
        f"[bag_replay]: published all 5 frames of {TOPIC} in {bag}"
    ), output


@pytest.mark.slow
def test_ctrl_c_during_a_looping_replay_stops_it_quietly(tmp_path):
    write_recording(tmp_path / "bag", StoragePlugin.MCAP)
    process = _start(
        "--bag", str(tmp_path / "bag"), "--topic", TOPIC, "--loop",
        "--ros-args", "-p", "wait_for_subscriber:=false",
    )  # fmt: skip
    time.sleep(4.0)  # imports, then frames and /clock going out
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    output, _ = process.communicate(timeout=20)
    assert process.returncode == 0 and time.monotonic() - started < 2.0, output
    [line] = output.strip().splitlines()
    assert line.startswith("[INFO]") and "replaying 5 frames" in line and "looping" in line


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "cause"),
    [
        (("--bag", "{tmp}/absent", "--topic", TOPIC), "{tmp}/absent"),
        (("--bag", "{tmp}/bag", "--topic", "/cam/missing"), f"/cam/missing ... {TOPIC}"),
        (("--bag", "{tmp}/bag", "--topic", "/chatter"), "std_msgs/msg/String"),
        (("--bag", "{tmp}/bag"), "needs --topic"),
        (("--bag", "{tmp}/bag", "--topic", TOPIC, "--rate", "0"), "--rate must be > 0, got 0"),
        (("--topic", TOPIC), "--topic, --rate, --loop and --remap-to go with --bag"),
        (("--bag", "{tmp}/bag", "--topic", TOPIC, "--speed", "2"), "unrecognized arguments"),
    ],
    ids=["missing-bag", "missing-topic", "not-an-image", "no-topic", "rate-0", "no-bag", "unknown"],
)
def test_a_failed_start_is_one_line(tmp_path, args, cause):
    write_recording(tmp_path / "bag", StoragePlugin.MCAP, frames=1)
    process = _start(*(arg.format(tmp=tmp_path) for arg in args))
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    [line] = output.strip().splitlines()
    assert line.startswith("[ERROR] [ovseg_frame_publisher]: cannot start: "), output
    for part in cause.format(tmp=tmp_path).split(" ... "):
        assert part in line, output


def test_ros_arguments_are_left_to_rclpy():
    argv = ["prog", "--bag", "b", "--ros-args", "-r", "image:=/x", "--", "--topic", "/t"]
    assert parse_replay(argv) == Replay(Path("b"), "/t")
    assert parse_replay(["prog", "--ros-args", "-p", "source:=toy"]) is None
