"""Depth images, camera_info and labelled point clouds as messages: decoding depth in every
supported layout, clear errors for malformed input, PointCloud2 built and read back exactly,
and the 3D fields of SegmentationResult."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from ovseg_ros.engine.geometry import Intrinsics, LabelledPoints, SegmentGeometry
from ovseg_ros.engine.segmentation import UNLABELED, Segment, Segmentation
from ovseg_ros.ros.conversions import (
    CameraInfoError,
    ImageConversionError,
    OversizedImageError,
    camera_info_to_intrinsics,
    cloud_to_arrays,
    depth_to_metres,
    image_to_rgb,
    points_to_cloud,
    segmentation_to_msg,
)

MILLIMETRES = np.array([[0, 1, 999], [1234, 65535, 500]], dtype=np.uint16)
METRES = np.array([[1.5, np.nan, np.inf], [-np.inf, -2.0, 0.0]], dtype=np.float32)


def _image(pixels: np.ndarray, encoding: str, big_endian: bool = False, padding: int = 0) -> Image:
    """An Image of (H, W) pixels stored in the given byte order, each row followed by `padding`
    bytes of 0xAB."""
    height, width = pixels.shape
    stored = pixels.astype(pixels.dtype.newbyteorder(">" if big_endian else "<"))
    rows = stored.view(np.uint8).reshape(height, width * pixels.itemsize)
    padded = np.hstack([rows, np.full((height, padding), 0xAB, dtype=np.uint8)])
    return Image(
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(big_endian),
        step=padded.shape[1],
        data=padded.tobytes(),
    )


@pytest.mark.parametrize("encoding", ["16UC1", "mono16"])
@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("padding", [0, 6])
def test_millimetre_depth_becomes_metres(encoding, big_endian, padding):
    depth = depth_to_metres(_image(MILLIMETRES, encoding, big_endian, padding))
    assert depth.dtype == np.float32 and depth.shape == (2, 3)
    expected = MILLIMETRES.astype(np.float32) / np.float32(1000)
    np.testing.assert_array_equal(depth, expected)
    assert depth[0, 0] == 0.0 and depth[1, 0] == np.float32(1.234)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("padding", [0, 5])
def test_float_depth_maps_every_missing_reading_to_zero(big_endian, padding):
    depth = depth_to_metres(_image(METRES, "32FC1", big_endian, padding))
    assert depth.dtype == np.float32
    np.testing.assert_array_equal(depth, [[1.5, 0, 0], [0, 0, 0]])


def test_depth_larger_than_max_pixels_is_refused_before_reading():
    msg = Image(height=1000, width=1000, encoding="16UC1", step=2000)  # no data at all
    with pytest.raises(OversizedImageError, match="1000x1000"):
        depth_to_metres(msg, max_pixels=1000)


@pytest.mark.parametrize(
    ("msg", "words"),
    [
        (_image(np.zeros((2, 2), np.uint8), "rgb8"), ["'rgb8'", "16UC1", "mono16", "32FC1"]),
        (_image(np.zeros((2, 2), np.uint8), "8UC1"), ["'8UC1'", "16UC1", "mono16", "32FC1"]),
        (Image(height=0, width=4, encoding="16UC1", step=8), ["empty depth image", "4x0"]),
        (
            Image(height=2, width=3, encoding="32FC1", step=12, data=bytes(20)),
            ["truncated depth image", "3x2 32FC1", "24 bytes", "got step 12 and 20 bytes"],
        ),
        (
            Image(height=2, width=3, encoding="16UC1", step=4, data=bytes(8)),
            ["truncated depth image", "step >= 6", "got step 4"],
        ),
    ],
    ids=["rgb8", "8UC1", "empty", "short-data", "short-step"],
)
def test_malformed_depth_raises_one_clear_sentence(msg, words):
    with pytest.raises(ImageConversionError) as raised:
        depth_to_metres(msg)
    text = str(raised.value)
    assert "\n" not in text
    for word in words:
        assert word in text


def test_image_to_rgb_reads_big_endian_padded_mono16():
    image = _image(np.array([[0, 256], [512, 1024]], np.uint16), "mono16", True, 3)
    rgb = image_to_rgb(image)
    np.testing.assert_array_equal(rgb[:, :, 0], [[0, 64], [128, 255]])
    with pytest.raises(ImageConversionError, match="unsupported image encoding '16UC1'"):
        image_to_rgb(_image(MILLIMETRES, "16UC1"))


def _camera_info(k: list[float], width: int = 640, height: int = 480) -> CameraInfo:
    return CameraInfo(width=width, height=height, k=[float(v) for v in k])


def test_camera_info_gives_intrinsics_from_k():
    msg = _camera_info([615.5, 0, 320.25, 0, 616.0, 240.75, 0, 0, 1])
    assert camera_info_to_intrinsics(msg) == Intrinsics(
        fx=615.5, fy=616.0, cx=320.25, cy=240.75, width=640, height=480
    )


@pytest.mark.parametrize(
    ("msg", "words"),
    [
        (_camera_info([0] * 9), ["all-zero K", "not calibrated"]),
        (_camera_info([0, 0, 320, 0, 600, 240, 0, 0, 1]), ["fx=0.0", "> 0"]),
        (_camera_info([600, 0, 320, 0, -600, 240, 0, 0, 1]), ["fy=-600.0", "> 0"]),
        (_camera_info([600, 0, math.nan, 0, 600, 240, 0, 0, 1]), ["cx=nan", "finite"]),
        (_camera_info([600, 0, 320, 0, 600, 240, 0, 0, 1], width=0), ["got 0 x 480"]),
        (_camera_info([600, 0, 320, 0, 600, 240, 0, 0, 1], height=0), ["got 640 x 0"]),
    ],
    ids=["uncalibrated", "zero-fx", "negative-fy", "nan-cx", "no-width", "no-height"],
)
def test_unusable_camera_info_raises_a_clear_error(msg, words):
    with pytest.raises(CameraInfoError) as raised:
        camera_info_to_intrinsics(msg)
    for word in words:
        assert word in str(raised.value)


COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [18, 52, 86]], dtype=np.uint8)
PACKED = [0x00FF0000, 0x0000FF00, 0x000000FF, 0x00123456]


def _points(count: int) -> LabelledPoints:
    rng = np.random.default_rng(17)
    return LabelledPoints(
        xyz=rng.normal(0.0, 2.0, (count, 3)).astype(np.float32),
        labels=rng.integers(0, len(COLORS), count).astype(np.uint32),
        scores=rng.random(count, dtype=np.float32),
        pixels=np.arange(count, dtype=np.int64),
    )


def test_cloud_layout_is_the_documented_one():
    header = Header(frame_id="camera_color_optical_frame")
    header.stamp.sec, header.stamp.nanosec = 12, 34
    cloud = points_to_cloud(_points(5), COLORS, header)
    assert cloud.header == header
    assert (cloud.height, cloud.width, cloud.point_step, cloud.row_step) == (1, 5, 24, 120)
    assert cloud.is_dense and cloud.is_bigendian == (not np.little_endian)
    assert len(cloud.data) == 120
    assert [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields] == [
        ("x", 0, PointField.FLOAT32, 1),
        ("y", 4, PointField.FLOAT32, 1),
        ("z", 8, PointField.FLOAT32, 1),
        ("rgb", 12, PointField.FLOAT32, 1),
        ("label", 16, PointField.UINT32, 1),
        ("score", 20, PointField.FLOAT32, 1),
    ]


def test_cloud_round_trip_is_exact_and_rgb_is_packed_0x00rrggbb():
    points = _points(1000)
    arrays = cloud_to_arrays(points_to_cloud(points, COLORS, Header()))
    assert list(arrays) == ["x", "y", "z", "rgb", "label", "score"]
    np.testing.assert_array_equal(np.stack([arrays["x"], arrays["y"], arrays["z"]], 1), points.xyz)
    np.testing.assert_array_equal(arrays["label"], points.labels)
    np.testing.assert_array_equal(arrays["score"], points.scores)
    assert arrays["rgb"].dtype == np.uint32
    np.testing.assert_array_equal(arrays["rgb"], np.array(PACKED, np.uint32)[points.labels])
    for label, packed in enumerate(PACKED):
        assert set(arrays["rgb"][points.labels == label].tolist()) == {packed}
        r, g, b = COLORS[label].tolist()
        assert packed >> 24 == 0 and (packed >> 16) & 0xFF == r
        assert (packed >> 8) & 0xFF == g and packed & 0xFF == b


def test_rgb_bits_in_the_raw_bytes():
    points = LabelledPoints(
        xyz=np.zeros((3, 3), np.float32),
        labels=np.array([0, 1, 3], np.uint32),
        scores=np.ones(3, np.float32),
        pixels=np.arange(3, dtype=np.int64),
    )
    raw = np.frombuffer(bytes(points_to_cloud(points, COLORS, Header()).data), np.uint8)
    rgb = raw.reshape(3, 24)[:, 12:16].copy().view(np.uint32)[:, 0]
    assert [hex(v) for v in rgb] == ["0xff0000", "0xff00", "0x123456"]


def test_empty_cloud_is_valid():
    empty = LabelledPoints(
        xyz=np.zeros((0, 3), np.float32),
        labels=np.zeros(0, np.uint32),
        scores=np.zeros(0, np.float32),
        pixels=np.zeros(0, np.int64),
    )
    cloud = points_to_cloud(empty, COLORS, Header(frame_id="cam"))
    assert (cloud.height, cloud.width, cloud.row_step, len(cloud.data)) == (1, 0, 0, 0)
    assert len(cloud.fields) == 6 and cloud.point_step == 24
    arrays = cloud_to_arrays(cloud)
    assert all(values.shape == (0,) for values in arrays.values())


def test_label_without_colour_is_refused():
    points = _points(10)
    with pytest.raises(ValueError, match="colors has 2 rows"):
        points_to_cloud(points, COLORS[:2], Header())


def test_cloud_reader_follows_the_message_layout():
    """A big-endian cloud of 2 rows with its own field order, padding in each point and after
    each row, as another driver might publish it."""
    layout = np.dtype(
        {
            "names": ["intensity", "rgb", "x", "y", "z"],
            "formats": [">u2", ">f4", ">f4", ">f4", ">f4"],
            "offsets": [0, 4, 8, 12, 16],
            "itemsize": 32,
        }
    )
    points = np.zeros((2, 3), dtype=layout)
    points["intensity"] = [[1, 2, 3], [4, 5, 6]]
    points["rgb"] = np.array([[0x00FF0000, 0x0000FF00, 0x000000FF]] * 2, ">u4").view(">f4")
    points["x"] = [[0.5, 1.5, 2.5], [3.5, 4.5, 5.5]]
    row_pad = np.full((2, 8), 0xCD, np.uint8)
    data = np.hstack([points.view(np.uint8).reshape(2, 96), row_pad]).tobytes()
    fields = [
        PointField(name=name, offset=layout.fields[name][1], datatype=datatype, count=1)
        for name, datatype in [
            ("intensity", PointField.UINT16),
            ("rgb", PointField.FLOAT32),
            ("x", PointField.FLOAT32),
            ("y", PointField.FLOAT32),
            ("z", PointField.FLOAT32),
        ]
    ]
    cloud = PointCloud2(
        height=2, width=3, fields=fields, is_bigendian=True, point_step=32, row_step=104
    )
    cloud.data = data
    arrays = cloud_to_arrays(cloud)
    np.testing.assert_array_equal(arrays["intensity"], [1, 2, 3, 4, 5, 6])
    assert arrays["intensity"].dtype == np.uint16
    np.testing.assert_array_equal(arrays["rgb"], [0xFF0000, 0xFF00, 0xFF] * 2)
    np.testing.assert_array_equal(arrays["x"], [0.5, 1.5, 2.5, 3.5, 4.5, 5.5])
    assert arrays["x"].dtype == np.float32 and arrays["x"].dtype.isnative
    cloud.data = data[:-1]
    with pytest.raises(ValueError, match="truncated cloud"):
        cloud_to_arrays(cloud)


def _segmentation(geometry: SegmentGeometry | None, has_depth: bool) -> Segmentation:
    labels = np.full((4, 5), UNLABELED, np.uint16)
    labels[1:3, 1:4] = 0
    segment = Segment(0, "chair", 0.75, (1, 1, 3, 2), np.ones((2, 3), bool), 6, geometry)
    return Segmentation(
        labels=labels,
        scores=np.zeros((4, 5), np.float32),
        class_names=["chair"],
        vocabulary_version=3,
        segments=[segment],
        has_depth=has_depth,
    )


def _xyz(point) -> list[float]:
    return [point.x, point.y, point.z]


def test_segmentation_to_msg_writes_geometry():
    geometry = SegmentGeometry(
        centroid=np.array([0.25, -0.5, 2.125], np.float32),
        box_min=np.array([0.0, -1.0, 2.0], np.float32),
        box_max=np.array([0.5, 0.0, 2.25], np.float32),
        points=5,
    )
    result = segmentation_to_msg(_segmentation(geometry, has_depth=True), Header(frame_id="cam"))
    assert result.has_depth
    segment = result.segments[0]
    assert segment.has_3d and segment.valid_points == 5 and segment.area == 6
    assert _xyz(segment.centroid) == [0.25, -0.5, 2.125]
    assert _xyz(segment.box_min) == [0.0, -1.0, 2.0]
    assert _xyz(segment.box_max) == [0.5, 0.0, 2.25]


@pytest.mark.parametrize("has_depth", [False, True])
def test_segment_without_geometry_has_nan_points(has_depth):
    result = segmentation_to_msg(_segmentation(None, has_depth), Header(frame_id="cam"))
    assert result.has_depth == has_depth
    segment = result.segments[0]
    assert not segment.has_3d and segment.valid_points == 0
    for point in (segment.centroid, segment.box_min, segment.box_max):
        assert all(math.isnan(v) for v in _xyz(point))
