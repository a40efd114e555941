"""The segmenter and frame publisher started as processes, as `ros2 run`/`ros2 launch` would."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO_ROOT
from rcl_interfaces.srv import GetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import parameter_value_to_python
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import call_service, spin_until
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from tiny_model import TINY_CHECKPOINT, TINY_MODEL

from ovseg_ros.engine import toy_world
from ovseg_ros.msg import SegmentationResult
from ovseg_ros.ros.conversions import array_to_image

pytestmark = pytest.mark.slow


def _start(module: str, *ros_args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, "--ros-args", *ros_args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(process: subprocess.Popen) -> str:
    process.terminate()
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


def test_params_file_and_remap_are_picked_up(ros_context, tmp_path):
    """config/segmenter.yaml supplies every value but the weights, which a second file overrides
    (ViT-B-16/openai cannot be downloaded here)."""
    defaults = yaml.safe_load((REPO_ROOT / "config" / "segmenter.yaml").read_text())
    expected = dict(defaults["/**"]["ros__parameters"])
    weights = {"model": TINY_MODEL, "pretrained": "", "checkpoint": str(TINY_CHECKPOINT)}
    override = tmp_path / "weights.yaml"
    override.write_text(yaml.safe_dump({"ovseg_segmenter": {"ros__parameters": weights}}))
    expected.update(weights)
    expected["vocabulary"] = toy_world.shape_classes()
    vocabulary = "vocabulary:=[" + ",".join(f"'{n}'" for n in expected["vocabulary"]) + "]"
    process = _start(
        "ovseg_ros.ros.segmenter_node",
        "--params-file",
        str(REPO_ROOT / "config" / "segmenter.yaml"),
        "--params-file",
        str(override),
        "-p",
        vocabulary,
        "-r",
        "image:=/cam/image_raw",
    )
    node = Node("param_reader", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    try:
        client = node.create_client(GetParameters, "/ovseg_segmenter/get_parameters")
        response = call_service(executor, client, GetParameters.Request(names=list(expected)))
        assert response is not None, _stop(process)
        got = {
            name: parameter_value_to_python(value)
            for name, value in zip(expected, response.values, strict=True)
        }
        assert got == expected
        assert spin_until(
            executor, lambda: bool(node.get_subscriptions_info_by_topic("/cam/image_raw"))
        )
    finally:
        _stop(process)
        node.destroy_node()


def test_frame_publisher_feeds_segmenter_process(ros_context, tmp_path):
    import cv2

    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(3):
        scene = toy_world.generate_scene(1_000_020 + index)
        cv2.imwrite(str(frames / f"{index:03d}.png"), scene.image[:, :, ::-1])
    settings = {
        "model": TINY_MODEL,
        "pretrained": "",
        "checkpoint": str(TINY_CHECKPOINT),
        "max_age_s": 0.0,
        "input_reliability": "reliable",
    }
    params = tmp_path / "segmenter.yaml"
    params.write_text(yaml.safe_dump({"ovseg_segmenter": {"ros__parameters": settings}}))
    segmenter = _start("ovseg_ros.ros.segmenter_node", "--params-file", str(params))
    publisher = _start(
        "ovseg_ros.ros.frame_publisher",
        "-p",
        f"source:={frames}",
        "-p",
        "rate_hz:=2.0",
        "-p",
        "loop:=true",
    )
    node = Node("result_reader", context=ros_context)
    results: list[SegmentationResult] = []
    node.create_subscription(
        SegmentationResult,
        "/ovseg_segmenter/result",
        results.append,
        QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
    )
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    try:
        assert spin_until(executor, lambda: len(results) >= 3, timeout_s=90.0), _stop(
            segmenter
        ) + _stop(publisher)
        assert all(r.header.frame_id == "camera" for r in results)
        assert len({(r.header.stamp.sec, r.header.stamp.nanosec) for r in results}) == len(results)
    finally:
        _stop(publisher)
        _stop(segmenter)
        node.destroy_node()


TINY_WEIGHTS = ("-p", f"model:={TINY_MODEL}", "-p", f"checkpoint:={TINY_CHECKPOINT}")


def _error_lines(output: str) -> list[str]:
    """Lines of a process's output that are not its INFO log."""
    return [line for line in output.splitlines() if line.strip() and "[INFO]" not in line]


@pytest.mark.parametrize(
    ("args", "cause"),
    [
        (("-p", f"model:={TINY_MODEL}", "-p", "checkpoint:=/absent/tiny.safetensors"),
         "/absent/tiny.safetensors"),
        ((*TINY_WEIGHTS, "-p", "vocabulary:=person"), "vocabulary must be a list of names"),
        ((*TINY_WEIGHTS, "-p", "device:=gpu"), "device must be one of"),
        ((*TINY_WEIGHTS, "-p", "vocabulary:=[]"), "the vocabulary is empty"),
        (("--params-file", "/absent/params.yaml"), "Couldn't parse params file"),
    ],
)  # fmt: skip
def test_a_failed_start_is_one_line_naming_the_cause(args, cause):
    process = _start("ovseg_ros.ros.segmenter_node", *args)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    lines = _error_lines(output)
    assert len(lines) == 1, output
    assert lines[0].startswith("[ERROR] [ovseg_segmenter]: cannot start:") and cause in lines[0]


@pytest.mark.parametrize(
    ("args", "cause"),
    [
        (("-p", "source:=/absent/frames"), "no such folder or video file: /absent/frames"),
        ((), "parameter source is empty"),
        (("-p", "rate_hz:=0.0"), "rate_hz must be > 0"),
    ],
)
def test_frame_publisher_failed_start_is_one_line(args, cause):
    process = _start("ovseg_ros.ros.frame_publisher", *args)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    lines = _error_lines(output)
    assert len(lines) == 1 and "[ovseg_frame_publisher]: cannot start:" in lines[0], output
    assert cause in lines[0]


class FrameFeeder:
    """Publishes a 1920x1080 toy scene to one or more segmenter processes until each has
    published a result, so that the next frame is in flight when the test signals them."""

    def __init__(self, context, namespaces: list[str]) -> None:
        import cv2

        scene = toy_world.generate_scene(1_000_040)
        self.msg = array_to_image(cv2.resize(scene.image, (1920, 1080)), "rgb8", Header())
        self.node = Node("frame_feeder", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.publishers = [
            self.node.create_publisher(Image, f"{ns}/image", qos) for ns in namespaces
        ]
        self.results = {ns: 0 for ns in namespaces}
        for ns in namespaces:
            self.node.create_subscription(
                SegmentationResult,
                f"{ns}/ovseg_segmenter/result",
                lambda _, ns=ns: self.results.__setitem__(ns, self.results[ns] + 1),
                qos,
            )

    def feed_until_every_node_answered(self, timeout_s: float = 90.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while min(self.results.values()) == 0 and time.monotonic() < deadline:
            self.feed(0.3)
        return min(self.results.values()) > 0

    def feed(self, spin_s: float) -> None:
        for publisher in self.publishers:
            publisher.publish(self.msg)
        spin_until(self.executor, lambda: False, timeout_s=spin_s)

    def close(self) -> None:
        self.node.destroy_node()


def _segmenter(namespace: str = "") -> subprocess.Popen:
    """A segmenter process on full-size frames (processing_size 0), so a frame takes long."""
    return _start(
        "ovseg_ros.ros.segmenter_node", *TINY_WEIGHTS, "-p", "max_age_s:=0.0",
        "-p", "processing_size:=0", "-p", "input_reliability:=reliable",
        *(("-r", f"__ns:={namespace}") if namespace else ()),
    )  # fmt: skip


def _exit_after_signals(processes: list[subprocess.Popen], signals: list[int]) -> list[float]:
    """Sends each of `signals` (0.2 s apart) to every process; seconds until each exits."""
    started = time.monotonic()
    for index, signum in enumerate(signals):
        if index:
            time.sleep(0.2)
        for process in processes:
            process.send_signal(signum)
    durations = []
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        durations.append(time.monotonic() - started)
    return durations


@pytest.mark.parametrize(
    "signals",
    [[signal.SIGINT], [signal.SIGTERM], [signal.SIGINT, signal.SIGINT]],
    ids=["ctrl-c", "sigterm", "ctrl-c-twice"],
)
def test_a_signal_with_a_frame_in_flight_stops_quietly_within_2_s(ros_context, signals):
    process = _segmenter()
    feeder = FrameFeeder(ros_context, [""])
    try:
        assert feeder.feed_until_every_node_answered(), _stop(process)
        feeder.feed(0.2)
        [seconds] = _exit_after_signals([process], signals)
        output = process.stdout.read()
    finally:
        _stop(process)
        feeder.close()
    assert process.returncode == 0, output
    assert seconds < 2.0, (seconds, output)
    assert _error_lines(output) == [], output


def test_several_segmenters_under_load_stop_on_one_ctrl_c(ros_context):
    namespaces = ["/front", "/rear"]
    processes = [_segmenter(ns) for ns in namespaces]
    feeder = FrameFeeder(ros_context, namespaces)
    try:
        assert feeder.feed_until_every_node_answered(), "".join(map(_stop, processes))
        feeder.feed(0.2)
        durations = _exit_after_signals(processes, [signal.SIGINT])
        outputs = [process.stdout.read() for process in processes]
    finally:
        for process in processes:
            _stop(process)
        feeder.close()
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert max(durations) < 2.0, (durations, outputs)
    assert all(_error_lines(output) == [] for output in outputs), outputs


def test_frame_publisher_stops_quietly(ros_context, tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "0.png"), toy_world.generate_scene(1_000_041).image)
    process = _start(
        "ovseg_ros.ros.frame_publisher", "-p", f"source:={tmp_path}",
        "-p", "wait_for_subscriber:=false", "-p", "rate_hz:=20.0",
    )  # fmt: skip
    time.sleep(3.0)
    [seconds] = _exit_after_signals([process], [signal.SIGINT])
    output = process.stdout.read()
    assert process.returncode == 0 and seconds < 2.0, output
    assert _error_lines(output) == [], output


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_installed_program_stops_quietly_on_a_signal_during_its_imports(signum):
    """`ovseg_segmenter` (what ros2 run and ros2 launch start) takes signals from its first
    moment: one that comes while torch is imported ends it once the imports are done."""
    program = (
        REPO_ROOT / ".build" / "install" / "ovseg_ros" / "lib" / "ovseg_ros" / "ovseg_segmenter"
    )
    process = subprocess.Popen(
        [sys.executable, str(program), "--ros-args", *TINY_WEIGHTS],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(1.5)  # past the interpreter's start, inside `import torch` (seconds)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert output.strip() == "", output  # neither a traceback nor a started node
