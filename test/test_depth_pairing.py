"""Depth paired with colour frames by stamp, over real DDS with an in-process segmenter: depth
that arrives after its colour frame and is followed by many more, depth or camera_info that
cannot be used (2D only, counted, the colour frame's outputs intact), and the pairing rules."""

from __future__ import annotations

import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import spin_until
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from test_segmenter_node import _overrides

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.toy_depth import generate_depth
from ovseg_ros.msg import SegmentationResult
from ovseg_ros.ros.camera import MAX_EXPECTED, DepthPairing, same_aspect
from ovseg_ros.ros.conversions import array_to_image
from ovseg_ros.ros.segmenter_node import SegmenterNode

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def _header(stamp_ns: int) -> Header:
    header = Header(frame_id="cam_optical")
    header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return header


def _depth(stamp_ns: int) -> Image:
    return array_to_image(np.zeros((2, 2), np.uint16), "16UC1", _header(stamp_ns))


def test_pairing_holds_the_nearest_depth_from_arrival_to_publication():
    pairing = DepthPairing()
    pairing.add(_depth(1_000_000_000))
    pairing.expect(1_010_000_000, tolerance_ns=20_000_000)  # 10 ms after the kept depth
    pairing.expect(2_000_000_000, tolerance_ns=20_000_000)  # its depth comes later
    for step in range(40):  # 30 Hz after both frames: far more than the kept depth images
        pairing.add(_depth(2_000_000_000 - 15_000_000 + step * 33_333_333))
    first, second = pairing.pop(1_010_000_000), pairing.pop(2_000_000_000)
    assert first.header.stamp.sec == 1 and first.header.stamp.nanosec == 0
    assert (second.header.stamp.sec, second.header.stamp.nanosec) == (1, 985_000_000)
    assert pairing.pop(2_000_000_000) is None  # popped once
    pairing.expect(5_000_000_000, tolerance_ns=20_000_000)
    assert pairing.pop(5_000_000_000) is None  # nothing within the tolerance
    for index in range(MAX_EXPECTED + 3):  # frames never published do not pile up
        pairing.expect(10_000_000_000 + index, tolerance_ns=0)
    assert pairing.pop(10_000_000_000) is None
    assert len(pairing._expected) == MAX_EXPECTED


def test_same_aspect_allows_rounding_only():
    assert same_aspect((240, 320), (480, 640)) and same_aspect((360, 640), (720, 1281))
    assert not same_aspect((480, 640), (720, 1280)) and not same_aspect((480, 848), (480, 640))


class DepthHarness:
    """A segmenter with use_depth and a client feeding colour, depth and camera_info."""

    def __init__(self, context) -> None:
        self.segmenter = SegmenterNode(
            context=context,
            parameter_overrides=_overrides(use_depth=True, input_reliability="reliable"),
        )
        self.node = Node("pairing_client", context=context)
        self.results: dict[int, SegmentationResult] = {}
        self.node.create_subscription(
            SegmentationResult,
            "/ovseg_segmenter/result",
            lambda msg: self.results.__setitem__(msg.header.stamp.sec, msg),
            RELIABLE,
        )
        self.image_pub = self.node.create_publisher(Image, "/image", RELIABLE)
        self.depth_pub = self.node.create_publisher(Image, "/depth", RELIABLE)
        self.info_pub = self.node.create_publisher(CameraInfo, "/camera_info", RELIABLE)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.segmenter)
        self.executor.add_node(self.node)
        scene = toy_world.generate_scene(1_000_060)
        self.image, self.depth = scene.image, generate_depth(scene)

    def spin_until(self, done, timeout_s: float = 30.0) -> bool:
        return spin_until(self.executor, done, timeout_s)

    def camera_info(self, k: list[float] | None = None, size=(320, 240)) -> CameraInfo:
        intrinsics = self.depth.intrinsics
        info = CameraInfo(header=_header(0), width=size[0], height=size[1])
        info.k = k or [
            intrinsics.fx,
            0.0,
            intrinsics.cx,
            0.0,
            intrinsics.fy,
            intrinsics.cy,
            0,
            0,
            1,
        ]
        return info

    def frame(self, sec: int) -> Image:
        return array_to_image(self.image, "rgb8", _header(sec * 1_000_000_000))

    def depth_image(self, stamp_ns: int) -> Image:
        return array_to_image(self.depth.sensor_mm, "16UC1", _header(stamp_ns))

    def result(self, sec: int) -> SegmentationResult:
        assert self.spin_until(lambda: sec in self.results)
        return self.results[sec]

    def close(self) -> None:
        self.executor.shutdown()
        self.segmenter.destroy_node()
        self.node.destroy_node()


@pytest.fixture
def rgbd(ros_context):
    h = DepthHarness(ros_context)
    publishers = (h.image_pub, h.depth_pub, h.info_pub)
    assert h.spin_until(lambda: all(p.get_subscription_count() for p in publishers))
    yield h
    h.close()


def test_depth_after_its_frame_and_a_flood_of_later_depth_is_still_paired(rgbd):
    rgbd.info_pub.publish(rgbd.camera_info())
    rgbd.spin_until(lambda: False, timeout_s=0.2)
    rgbd.image_pub.publish(rgbd.frame(5))  # colour first, its depth after it
    for step in range(31):  # its own depth, then 30 later ones at 30 Hz
        rgbd.depth_pub.publish(rgbd.depth_image(5_000_000_000 + step * 33_333_333))
        rgbd.spin_until(lambda: False, timeout_s=0.033)
    assert rgbd.result(5).has_depth
    rgbd.depth_pub.publish(rgbd.depth_image(7_000_000_000))  # depth first, then a flood
    rgbd.spin_until(lambda: False, timeout_s=0.2)
    rgbd.image_pub.publish(rgbd.frame(7))
    for step in range(1, 31):
        rgbd.depth_pub.publish(rgbd.depth_image(7_000_000_000 + step * 33_333_333))
        rgbd.spin_until(lambda: False, timeout_s=0.033)
    result = rgbd.result(7)
    assert result.has_depth and any(s.has_3d for s in result.segments)
    stats = rgbd.segmenter.stats
    assert stats.with_depth == 2 and stats.depth_unmatched == 0 and stats.depth_invalid == 0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("depth_encoding", "unsupported depth image encoding 'rgb8'"),
        ("uncalibrated", "all-zero K"),
        ("other_aspect", "another aspect ratio"),
    ],
)
def test_unusable_depth_leaves_the_frame_in_2d_and_says_why(rgbd, change, reason, capfd):
    info = rgbd.camera_info()
    depth = rgbd.depth_image(3_000_000_000)
    if change == "depth_encoding":
        depth = array_to_image(rgbd.image, "rgb8", _header(3_000_000_000))
    elif change == "uncalibrated":
        info = rgbd.camera_info(k=[0.0] * 9)
    else:
        info = rgbd.camera_info(size=(1280, 720))
    rgbd.info_pub.publish(info)
    rgbd.spin_until(lambda: False, timeout_s=0.2)
    rgbd.depth_pub.publish(depth)
    rgbd.spin_until(lambda: False, timeout_s=0.2)
    rgbd.image_pub.publish(rgbd.frame(3))
    result = rgbd.result(3)
    assert not result.has_depth and result.segments
    assert not any(s.has_3d for s in result.segments)
    labels = np.frombuffer(bytes(result.labels.data), np.uint16).reshape(240, 320)
    expected = rgbd.segmenter.segmenter.segment(rgbd.image, rgbd.segmenter.vocabulary)
    np.testing.assert_array_equal(labels, expected.labels)
    assert rgbd.segmenter.stats.depth_invalid == 1
    assert reason in capfd.readouterr().err
