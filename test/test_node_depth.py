"""Depth in, 3D out: the segmenter started as a process with depth and camera_info over DDS.

One process serves every case in turn (each frame its own stamp): 16UC1 depth at the colour
resolution, 32FC1 depth at half of it, a frame without depth, depth stamped outside the
tolerance. ~/points is checked against the geometry computed here from the published depth and
intrinsics (every point's label against ~/labels), ~/result's per-segment 3D against the depth
inside each segment's mask and against the toy world's ground truth.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import spin_until
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from test_node_process import _start, _stop
from tiny_model import TINY_CHECKPOINT, TINY_MODEL

from ovseg_ros.engine import toy_world
from ovseg_ros.engine.render import class_colors
from ovseg_ros.engine.segmentation import UNLABELED
from ovseg_ros.engine.toy_depth import generate_depth, instance_geometry
from ovseg_ros.msg import SegmentationResult
from ovseg_ros.ros.conversions import array_to_image, cloud_to_arrays, pack_rgb

pytestmark = pytest.mark.slow

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
SHAPES = toy_world.shape_classes()
MAX_DEPTH_M = 3.0


def _header(stamp_sec: int, frame_id: str = "cam_optical") -> Header:
    header = Header(frame_id=frame_id)
    header.stamp.sec = stamp_sec
    return header


def _camera_info(intrinsics, header: Header) -> CameraInfo:
    info = CameraInfo(header=header, width=intrinsics.width, height=intrinsics.height)
    info.k = [intrinsics.fx, 0.0, intrinsics.cx, 0.0, intrinsics.fy, intrinsics.cy, 0, 0, 1.0]
    return info


def _expected_points(depth_m: np.ndarray, intrinsics, labels: np.ndarray) -> dict:
    """Every labelled pixel of depth_m (h, w) with depth in (0, MAX_DEPTH_M], in raster order,
    computed pixel by pixel: depth pixel (u, v) looks along the ray of the colour camera scaled
    to (w, h), and takes the label of the colour pixel holding its centre."""
    height, width = depth_m.shape
    sx, sy = width / intrinsics.width, height / intrinsics.height
    fx, fy = intrinsics.fx * sx, intrinsics.fy * sy
    cx, cy = (intrinsics.cx + 0.5) * sx - 0.5, (intrinsics.cy + 0.5) * sy - 0.5
    xyz, point_labels = [], []
    for v in range(height):
        for u in range(width):
            z = float(depth_m[v, u])
            label = labels[int((v + 0.5) / sy), int((u + 0.5) / sx)]
            if not 0 < z <= MAX_DEPTH_M or label == UNLABELED:
                continue
            xyz.append(((u - cx) * z / fx, (v - cy) * z / fy, z))
            point_labels.append(label)
    return {"xyz": np.array(xyz, np.float32), "label": np.array(point_labels, np.uint32)}


def _segment_mask(segment, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    roi = segment.roi
    box = np.frombuffer(bytes(segment.mask.data), np.uint8).reshape(roi.height, roi.width)
    mask[roi.y_offset : roi.y_offset + roi.height, roi.x_offset : roi.x_offset + roi.width] = (
        box > 0
    )
    return mask


def _point(p) -> np.ndarray:
    return np.array([p.x, p.y, p.z])


class DepthClient:
    """Feeds colour, depth and camera_info to the node and records its outputs by stamp."""

    def __init__(self, context) -> None:
        self.node = Node("depth_client", context=context)
        self.results: dict[int, SegmentationResult] = {}
        self.labels: dict[int, Image] = {}
        self.points: dict[int, PointCloud2] = {}
        sub = self.node.create_subscription
        sub(SegmentationResult, "/ovseg_segmenter/result", self._keep(self.results), RELIABLE)
        sub(Image, "/ovseg_segmenter/labels", self._keep(self.labels), RELIABLE)
        sub(PointCloud2, "/ovseg_segmenter/points", self._keep(self.points), RELIABLE)
        self.image_pub = self.node.create_publisher(Image, "/cam/color/image_raw", RELIABLE)
        self.depth_pub = self.node.create_publisher(Image, "/cam/depth/image_raw", RELIABLE)
        self.info_pub = self.node.create_publisher(CameraInfo, "/cam/color/camera_info", RELIABLE)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)

    @staticmethod
    def _keep(store: dict):
        return lambda msg: store.__setitem__(msg.header.stamp.sec, msg)

    def spin_until(self, done, timeout_s: float = 60.0) -> bool:
        return spin_until(self.executor, done, timeout_s)


def test_depth_gives_exact_points_and_segment_3d(ros_context):
    scene = toy_world.generate_scene(1_000_007)
    depth = generate_depth(scene)
    intrinsics = depth.intrinsics
    process = _start(
        "ovseg_ros.ros.segmenter_node",
        "-p", f"model:={TINY_MODEL}", "-p", "pretrained:=''",
        "-p", f"checkpoint:={TINY_CHECKPOINT}", "-p", "device:=cpu",
        "-p", "vocabulary:=[" + ",".join(f"'{n}'" for n in SHAPES) + "]",
        "-p", "prompt_templates:=['single']", "-p", "max_age_s:=0.0",
        "-p", "input_reliability:=reliable",
        "-p", "use_depth:=true", "-p", "points_stride:=1", "-p", f"max_depth_m:={MAX_DEPTH_M}",
        "-r", "image:=/cam/color/image_raw", "-r", "depth:=/cam/depth/image_raw",
        "-r", "camera_info:=/cam/color/camera_info",
    )  # fmt: skip
    client = DepthClient(ros_context)
    try:
        assert client.spin_until(
            lambda: (
                client.image_pub.get_subscription_count() > 0
                and client.depth_pub.get_subscription_count() > 0
                and client.info_pub.get_subscription_count() > 0
                and client.node.count_publishers("/ovseg_segmenter/points") > 0
            )
        ), _stop(process)
        half_mm = depth.sensor_mm[1::2, 1::2]  # the depth pixels whose centres are colour pixels'
        cases = {
            1: array_to_image(depth.sensor_mm, "16UC1", _header(1)),
            2: array_to_image(half_mm.astype(np.float32) / 1000, "32FC1", _header(2)),
            3: None,  # no depth
            4: array_to_image(depth.sensor_mm, "16UC1", _header(4, "cam_optical")),
        }
        cases[4].header.stamp.nanosec = 500_000_000  # 0.5 s off: beyond depth_tolerance_s
        client.info_pub.publish(_camera_info(intrinsics, _header(0)))
        for stamp, depth_msg in cases.items():
            if depth_msg is not None:
                client.depth_pub.publish(depth_msg)
            client.spin_until(lambda: False, timeout_s=0.2)
            client.image_pub.publish(array_to_image(scene.image, "rgb8", _header(stamp)))
            assert client.spin_until(lambda s=stamp: s in client.results and s in client.labels), (
                _stop(process)
            )
        assert client.spin_until(lambda: {1, 2} <= set(client.points), timeout_s=10.0), (
            [(s, r.has_depth) for s, r in client.results.items()],
            _stop(process),
        )
    finally:
        output = _stop(process)
        client.node.destroy_node()
    assert "Traceback" not in output, output

    for stamp, depth_m in ((1, depth.sensor_mm / 1000), (2, half_mm / 1000)):
        result, cloud = client.results[stamp], cloud_to_arrays(client.points[stamp])
        labels = np.frombuffer(bytes(client.labels[stamp].data), np.uint16).reshape(240, 320)
        expected = _expected_points(depth_m.astype(np.float32), intrinsics, labels)
        assert result.has_depth
        assert client.points[stamp].header.frame_id == "cam_optical"
        assert len(cloud["x"]) == len(expected["xyz"]) > 1000
        got = np.stack([cloud["x"], cloud["y"], cloud["z"]], axis=1)
        np.testing.assert_allclose(got, expected["xyz"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(cloud["label"], expected["label"])
        colors = pack_rgb(class_colors(list(result.class_names)))
        np.testing.assert_array_equal(cloud["rgb"], colors[cloud["label"]])

    result = client.results[1]
    depth_m = depth.sensor_mm.astype(np.float32) / 1000
    matched = 0
    for segment in result.segments:
        mask = _segment_mask(segment, (240, 320))
        valid = mask & (depth_m > 0) & (depth_m <= MAX_DEPTH_M)
        assert segment.has_3d == bool(valid.any())
        assert segment.valid_points == valid.sum()
        if not segment.has_3d:
            assert math.isnan(segment.centroid.x)
            continue
        v, u = np.nonzero(valid)
        z = depth_m[v, u].astype(np.float64)
        points = np.stack(
            [(u - intrinsics.cx) * z / intrinsics.fx, (v - intrinsics.cy) * z / intrinsics.fy, z],
            1,
        )
        np.testing.assert_allclose(_point(segment.centroid), points.mean(0), atol=1e-4)
        np.testing.assert_allclose(_point(segment.box_min), np.percentile(points, 5, 0), atol=1e-4)
        np.testing.assert_allclose(_point(segment.box_max), np.percentile(points, 95, 0), atol=1e-4)
        # Against the ground truth: segments that are one whole toy shape.
        for k in range(1, len(scene.shapes) + 1):
            instance = scene.instances == k
            if (mask & instance).sum() / (mask | instance).sum() < 0.9:
                continue
            matched += 1
            centroid, low, high = instance_geometry(depth, scene.instances, k)
            np.testing.assert_allclose(_point(segment.centroid), centroid, atol=0.03)
            assert (_point(segment.box_min) >= low - 0.02).all()
            assert (_point(segment.box_max) <= high + 0.02).all()
            assert abs(segment.centroid.z - depth.object_depths_m[k - 1]) < 0.02
    assert matched >= 1

    for stamp in (3, 4):  # no depth, depth out of tolerance: 2D only, said explicitly
        result = client.results[stamp]
        assert not result.has_depth and result.segments
        for segment in result.segments:
            assert not segment.has_3d and segment.valid_points == 0
            assert all(math.isnan(v) for v in _point(segment.centroid))
            assert all(math.isnan(v) for v in _point(segment.box_max))
        assert stamp not in client.points
    assert "2D only" in output and "within depth_tolerance_s" in output
