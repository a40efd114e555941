"""The segmenter and frame publisher started as processes, as `ros2 run`/`ros2 launch` would."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import REPO_ROOT
from rcl_interfaces.srv import GetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import parameter_value_to_python
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import spin_until
from tiny_model import TINY_CHECKPOINT, TINY_MODEL

from ovseg_ros.engine import toy_world
from ovseg_ros.msg import SegmentationResult

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
        assert client.wait_for_service(timeout_sec=60.0), _stop(process)
        future = client.call_async(GetParameters.Request(names=list(expected)))
        assert spin_until(executor, future.done)
        got = {
            name: parameter_value_to_python(value)
            for name, value in zip(expected, future.result().values, strict=True)
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


def test_missing_weights_stop_the_node_with_a_clear_error(tmp_path):
    missing = tmp_path / "absent.safetensors"
    process = _start(
        "ovseg_ros.ros.segmenter_node",
        "-p", f"model:={TINY_MODEL}", "-p", f"checkpoint:={missing}", "-p", "pretrained:=''",
    )  # fmt: skip
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "cannot start" in output and str(missing) in output
