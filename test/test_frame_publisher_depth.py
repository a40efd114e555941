"""The frame publisher's synthetic RGB-D source (source:=toy, depth:=true) over real DDS: one
header for image, depth and camera_info, depth and intrinsics of the toy scene, refusals with
one line, and the segmenter turning it into 3D."""

from __future__ import annotations

import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import spin_until
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from test_node_process import _start
from test_segmenter_node import _overrides

from ovseg_ros.engine.toy_depth import generate_depth
from ovseg_ros.engine.toy_world import EVAL_SEEDS, generate_scene
from ovseg_ros.msg import SegmentationResult
from ovseg_ros.ros.conversions import camera_info_to_intrinsics, depth_to_metres
from ovseg_ros.ros.frame_publisher import OPTICAL_FRAME, TOY_SCENES, FramePublisher, toy_frames
from ovseg_ros.ros.segmenter_node import SegmenterNode

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
WIDTH, HEIGHT = 320, 240


def _toy_publisher(context, **values) -> FramePublisher:
    settings = {"source": "toy", "depth": True, "width": WIDTH, "height": HEIGHT, **values}
    overrides = [Parameter(name, value=value) for name, value in settings.items()]
    return FramePublisher(context=context, parameter_overrides=overrides)


def _stamp(msg) -> tuple[int, int]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


class Recorder:
    """A node keeping every image, depth and camera_info message, by stamp."""

    def __init__(self, context) -> None:
        self.node = Node("rgbd_recorder", context=context)
        self.images: dict[tuple[int, int], Image] = {}
        self.depths: dict[tuple[int, int], Image] = {}
        self.infos: dict[tuple[int, int], CameraInfo] = {}
        for msg_type, topic, store in (
            (Image, "/image", self.images),
            (Image, "/depth", self.depths),
            (CameraInfo, "/camera_info", self.infos),
        ):
            self.node.create_subscription(
                msg_type, topic, lambda msg, s=store: s.__setitem__(_stamp(msg), msg), RELIABLE
            )


def test_toy_frames_are_the_held_out_scenes_with_their_sensor_depth():
    frames = list(toy_frames(32, 24))
    assert len(frames) == TOY_SCENES
    for index in (0, TOY_SCENES - 1):
        scene = generate_scene(EVAL_SEEDS.start + index, 24, 32)
        depth = generate_depth(scene)
        np.testing.assert_array_equal(frames[index].bgr, scene.image[:, :, ::-1])
        np.testing.assert_array_equal(frames[index].depth_mm, depth.sensor_mm)
        assert frames[index].intrinsics == depth.intrinsics


def test_image_depth_and_camera_info_share_one_header(ros_context):
    publisher = _toy_publisher(ros_context, rate_hz=20.0)
    recorder = Recorder(ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(publisher)
    executor.add_node(recorder.node)
    try:
        assert spin_until(executor, lambda: len(recorder.images) >= 3)
        assert spin_until(executor, lambda: set(recorder.images) <= set(recorder.depths))
        assert spin_until(executor, lambda: set(recorder.images) <= set(recorder.infos))
    finally:
        executor.shutdown()
        publisher.destroy_node()
        recorder.node.destroy_node()

    for index, stamp in enumerate(sorted(recorder.images)):  # in publishing order, from seed 0
        image, depth_msg, info = (
            store[stamp] for store in (recorder.images, recorder.depths, recorder.infos)
        )
        assert image.header.frame_id == depth_msg.header.frame_id == OPTICAL_FRAME
        assert info.header.frame_id == OPTICAL_FRAME
        assert (image.encoding, depth_msg.encoding) == ("rgb8", "16UC1")
        scene = generate_scene(EVAL_SEEDS.start + index, HEIGHT, WIDTH)
        expected = generate_depth(scene)
        pixels = np.frombuffer(bytes(image.data), np.uint8).reshape(HEIGHT, WIDTH, 3)
        np.testing.assert_array_equal(pixels, scene.image)
        depth_m = depth_to_metres(depth_msg)
        np.testing.assert_array_equal(depth_m, expected.sensor_mm.astype(np.float32) / 1000)
        np.testing.assert_allclose(depth_m, expected.sensor_m, atol=0.0005 + 1e-6)
        assert (depth_m == 0).any() and (depth_m > 0).mean() > 0.8  # holes, and mostly depth
        camera = expected.intrinsics
        assert camera_info_to_intrinsics(info) == camera
        np.testing.assert_array_equal(
            info.k, [camera.fx, 0, camera.cx, 0, camera.fy, camera.cy, 0, 0, 1]
        )
        assert info.distortion_model == "plumb_bob" and list(info.d) == [0.0] * 5
        np.testing.assert_array_equal(info.r, np.eye(3).ravel())
        np.testing.assert_array_equal(
            info.p, [camera.fx, 0, camera.cx, 0, 0, camera.fy, camera.cy, 0, 0, 0, 1, 0]
        )


def test_frame_id_defaults(ros_context):
    with_depth = _toy_publisher(ros_context)
    without_depth = _toy_publisher(ros_context, depth=False)
    given = _toy_publisher(ros_context, frame_id="my_optical_frame")
    try:
        assert with_depth.frame_id == OPTICAL_FRAME
        assert without_depth.frame_id == "camera"
        assert given.frame_id == "my_optical_frame"
        assert without_depth.depth_publisher is None and without_depth.info_publisher is None
    finally:
        for node in (with_depth, without_depth, given):
            node.destroy_node()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "cause"),
    [
        (("-p", "source:={folder}", "-p", "depth:=true"),
         "depth:=true needs source:=toy (a folder or a video has no depth), got source '{folder}'"),
        (("-p", "source:=toy", "-p", "width:=0"), "width and height must be >= 1, got 0x480"),
    ],
)  # fmt: skip
def test_refusals_are_one_line(tmp_path, args, cause):
    import cv2

    cv2.imwrite(str(tmp_path / "frame.png"), np.zeros((8, 8, 3), np.uint8))
    process = _start(
        "ovseg_ros.ros.frame_publisher", *(arg.format(folder=tmp_path) for arg in args)
    )
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    assert output.strip().splitlines() == [
        f"[ERROR] [ovseg_frame_publisher]: cannot start: {cause.format(folder=tmp_path)}"
    ]


def test_segmenter_gives_points_from_the_toy_rgbd_source(ros_context):
    segmenter = SegmenterNode(
        context=ros_context,
        parameter_overrides=_overrides(use_depth=True, input_reliability="reliable"),
    )
    publisher = _toy_publisher(ros_context, rate_hz=4.0)
    client = Node("points_client", context=ros_context)
    results: list[SegmentationResult] = []
    clouds: list[PointCloud2] = []
    client.create_subscription(
        SegmentationResult, "/ovseg_segmenter/result", results.append, RELIABLE
    )
    client.create_subscription(PointCloud2, "/ovseg_segmenter/points", clouds.append, RELIABLE)
    executor = SingleThreadedExecutor(context=ros_context)  # no callback left running after it
    for node in (segmenter, publisher, client):
        executor.add_node(node)
    try:
        assert spin_until(
            executor,
            lambda: clouds and any(r.has_depth for r in results),
            timeout_s=60.0,
        ), [r.has_depth for r in results]
    finally:
        executor.shutdown()
        for node in (publisher, client, segmenter):
            node.destroy_node()
    cloud = clouds[0]
    assert cloud.header.frame_id == OPTICAL_FRAME
    assert cloud.width * cloud.height > 1000
    result = next(r for r in results if r.has_depth)
    assert result.header.frame_id == OPTICAL_FRAME
    assert any(segment.has_3d for segment in result.segments)
