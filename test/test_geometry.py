"""Depth to labelled points and per-segment 3D (ovseg_ros.engine.geometry)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ovseg_ros.engine.geometry import (
    Intrinsics,
    labelled_points,
    segment_geometries,
    segment_id_map,
)
from ovseg_ros.engine.segmentation import UNLABELED, Segment


def _segment(mask: np.ndarray, class_id: int = 1) -> Segment:
    """A Segment of a full-image (H, W) bool mask, cropped to its bounding box."""
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    crop = mask[y0:y1, x0:x1].copy()
    box = (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
    return Segment(class_id, f"class{class_id}", 1.0, box, crop, int(crop.sum()))


def _reference_points(depth, intrinsics, labels, scores, max_depth, stride=1):
    """Straightforward per-pixel labelled_points: lists of xyz, label, score, colour pixel."""
    h, w = depth.shape
    colour_h, colour_w = labels.shape
    sx, sy = w / colour_w, h / colour_h
    fx, fy = intrinsics.fx * sx, intrinsics.fy * sy
    cx, cy = (intrinsics.cx + 0.5) * sx - 0.5, (intrinsics.cy + 0.5) * sy - 0.5
    xyz, point_labels, point_scores, pixels = [], [], [], []
    for v in range(0, h, stride):
        for u in range(0, w, stride):
            z = float(depth[v, u])
            if not (math.isfinite(z) and 0 < z <= max_depth):
                continue
            colour_u = min(math.floor((u + 0.5) * colour_w / w), colour_w - 1)
            colour_v = min(math.floor((v + 0.5) * colour_h / h), colour_h - 1)
            label = int(labels[colour_v, colour_u])
            if label == UNLABELED:
                continue
            xyz.append(((u - cx) / fx * z, (v - cy) / fy * z, z))
            point_labels.append(label)
            point_scores.append(float(scores[colour_v, colour_u]))
            pixels.append(colour_v * colour_w + colour_u)
    return np.array(xyz, np.float32).reshape(-1, 3), point_labels, point_scores, pixels


def _random_inputs(rng, colour_shape, depth_shape):
    """Random labels (some UNLABELED), scores and depth (some invalid) for the given shapes."""
    labels = rng.integers(0, 5, colour_shape).astype(np.uint16)
    labels[rng.random(colour_shape) < 0.2] = UNLABELED
    scores = rng.random(colour_shape).astype(np.float32)
    depth = rng.uniform(0.3, 6.0, depth_shape).astype(np.float32)
    depth[rng.random(depth_shape) < 0.1] = 0
    depth[rng.random(depth_shape) < 0.05] = np.nan
    return labels, scores, depth


def test_back_projection_of_known_pixels():
    intrinsics = Intrinsics(fx=100.0, fy=200.0, cx=2.0, cy=1.0, width=5, height=3)
    depth = np.zeros((3, 5), np.float32)
    depth[0, 4] = 2.0
    depth[2, 1] = 0.5
    labels = np.arange(15, dtype=np.uint16).reshape(3, 5)
    scores = np.linspace(0, 1, 15, dtype=np.float32).reshape(3, 5)
    points = labelled_points(depth, intrinsics, labels, scores, max_depth_m=10.0)
    # u = 4, v = 0, z = 2: x = (4 - 2) / 100 * 2, y = (0 - 1) / 200 * 2.
    # u = 1, v = 2, z = 0.5: x = (1 - 2) / 100 * 0.5, y = (2 - 1) / 200 * 0.5.
    expected = np.array([[0.04, -0.01, 2.0], [-0.005, 0.0025, 0.5]], np.float32)
    np.testing.assert_allclose(points.xyz, expected, rtol=1e-6)
    assert points.xyz.dtype == np.float32
    assert points.pixels.tolist() == [4, 11]
    assert points.labels.tolist() == [4, 11]
    assert points.labels.dtype == np.uint32
    np.testing.assert_array_equal(points.scores, scores.ravel()[[4, 11]])


def test_invalid_depth_and_unlabeled_pixels_are_left_out():
    intrinsics = Intrinsics(50.0, 50.0, 3.5, 0.0, 8, 1)
    depth = np.array([[1.0, 0.0, np.nan, np.inf, -1.0, 5.0, 5.001, 2.0]], np.float32)
    labels = np.array([[1, 1, 1, 1, 1, 1, 1, UNLABELED]], np.uint16)
    points = labelled_points(depth, intrinsics, labels, np.ones((1, 8), np.float32), 5.0)
    assert points.pixels.tolist() == [0, 5]
    assert points.xyz[:, 2].tolist() == [1.0, 5.0]


def test_nothing_valid_gives_empty_arrays():
    intrinsics = Intrinsics(50.0, 50.0, 2.0, 2.0, 4, 4)
    points = labelled_points(
        np.zeros((4, 4), np.float32),
        intrinsics,
        np.zeros((4, 4), np.uint16),
        np.ones((4, 4), np.float32),
        5.0,
    )
    assert points.xyz.shape == (0, 3)
    assert points.labels.shape == points.scores.shape == points.pixels.shape == (0,)


def test_stride_takes_every_stride_th_row_and_column_from_zero():
    intrinsics = Intrinsics(50.0, 50.0, 4.0, 3.0, 9, 7)
    depth = np.ones((7, 9), np.float32)
    labels = np.zeros((7, 9), np.uint16)
    points = labelled_points(depth, intrinsics, labels, np.ones((7, 9), np.float32), 5.0, 3)
    expected = [v * 9 + u for v in (0, 3, 6) for u in (0, 3, 6)]
    assert points.pixels.tolist() == expected


@pytest.mark.parametrize(
    "depth_shape, stride",
    [
        ((30, 40), 1),  # same resolution
        ((15, 20), 1),  # half (as 320x240 depth for 640x480 colour)
        ((60, 80), 1),  # double
        ((30, 53), 1),  # another aspect (as 848x480 depth for 640x480 colour)
        ((30, 53), 2),
        ((17, 23), 3),
    ],
)
def test_matches_a_per_pixel_computation_at_any_depth_resolution(depth_shape, stride):
    rng = np.random.default_rng(depth_shape[1] * 10 + stride)
    intrinsics = Intrinsics(fx=35.0, fy=33.0, cx=19.2, cy=14.6, width=40, height=30)
    labels, scores, depth = _random_inputs(rng, (30, 40), depth_shape)
    points = labelled_points(depth, intrinsics, labels, scores, 5.0, stride)
    xyz, point_labels, point_scores, pixels = _reference_points(
        depth, intrinsics, labels, scores, 5.0, stride
    )
    assert len(pixels) > 20
    assert points.pixels.tolist() == pixels
    assert points.labels.tolist() == point_labels
    assert points.scores.tolist() == point_scores
    np.testing.assert_array_equal(points.xyz, xyz)


@pytest.mark.parametrize("depth_size", [(320, 240), (848, 480), (1280, 960)])
def test_points_project_into_their_colour_pixel(depth_size):
    """Colour 640x480: each point projects with the colour intrinsics into the colour pixel
    its label comes from, and carries that pixel's label."""
    rng = np.random.default_rng(depth_size[0])
    intrinsics = Intrinsics(fx=610.0, fy=605.0, cx=318.3, cy=243.9, width=640, height=480)
    width, height = depth_size
    labels, scores, depth = _random_inputs(rng, (480, 640), (height, width))
    points = labelled_points(depth, intrinsics, labels, scores, 5.0)
    u = intrinsics.fx * points.xyz[:, 0] / points.xyz[:, 2] + intrinsics.cx
    v = intrinsics.fy * points.xyz[:, 1] / points.xyz[:, 2] + intrinsics.cy
    colour_v, colour_u = np.divmod(points.pixels, 640)
    assert np.all(np.abs(u - colour_u) <= 0.5 + 1e-3)
    assert np.all(np.abs(v - colour_v) <= 0.5 + 1e-3)
    np.testing.assert_array_equal(points.labels, labels.ravel()[points.pixels])
    np.testing.assert_array_equal(points.scores, scores.ravel()[points.pixels])
    colour_rows = np.floor((np.arange(height) + 0.5) * 480 / height).astype(int)
    colour_cols = np.floor((np.arange(width) + 0.5) * 640 / width).astype(int)
    labelled = labels[np.ix_(colour_rows, colour_cols)] != UNLABELED
    assert points.labels.size == np.count_nonzero(labelled & (depth > 0) & (depth <= 5.0))


def test_scaled_intrinsics():
    camera = Intrinsics(fx=600.0, fy=590.0, cx=320.5, cy=239.25, width=640, height=480)
    half = camera.scaled(320, 240)
    assert (half.fx, half.fy, half.width, half.height) == (300.0, 295.0, 320, 240)
    assert half.cx == pytest.approx((320.5 + 0.5) / 2 - 0.5)
    assert half.cy == pytest.approx((239.25 + 0.5) / 2 - 0.5)
    back = camera.scaled(848, 480).scaled(640, 480)
    for name in ("fx", "fy", "cx", "cy"):
        assert getattr(back, name) == pytest.approx(getattr(camera, name), rel=1e-12)
    assert (back.width, back.height) == (640, 480)
    # A 3D point projects to colour coordinate (u, v) and to (u + 0.5) * sx - 0.5, v alike.
    x, y, z = 0.3, -0.2, 1.7
    other = camera.scaled(848, 360)
    u = camera.fx * x / z + camera.cx
    v = camera.fy * y / z + camera.cy
    assert other.fx * x / z + other.cx == pytest.approx((u + 0.5) * 848 / 640 - 0.5)
    assert other.fy * y / z + other.cy == pytest.approx((v + 0.5) * 360 / 480 - 0.5)
    with pytest.raises(ValueError, match="size"):
        camera.scaled(0, 480)


def test_intrinsics_from_k():
    camera = Intrinsics.from_k([600, 0, 320, 0, 590, 240, 0, 0, 1], 640, 480)
    assert camera == Intrinsics(600.0, 590.0, 320.0, 240.0, 640, 480)
    with pytest.raises(ValueError, match="9 numbers"):
        Intrinsics.from_k([600, 0, 320, 0, 590, 240, 0, 0], 640, 480)
    with pytest.raises(ValueError, match="focal"):
        Intrinsics.from_k([0, 0, 320, 0, 590, 240, 0, 0, 1], 640, 480)
    with pytest.raises(ValueError, match="focal"):
        Intrinsics.from_k([600, 0, 320, 0, math.nan, 240, 0, 0, 1], 640, 480)
    with pytest.raises(ValueError, match="principal"):
        Intrinsics.from_k([600, 0, math.inf, 0, 590, 240, 0, 0, 1], 640, 480)
    with pytest.raises(ValueError, match="size"):
        Intrinsics.from_k([600, 0, 320, 0, 590, 240, 0, 0, 1], 640, 0)


def test_labelled_points_validates_arguments():
    camera = Intrinsics(50.0, 50.0, 2.0, 2.0, 4, 4)
    depth = np.ones((4, 4), np.float32)
    labels = np.zeros((4, 4), np.uint16)
    scores = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="stride"):
        labelled_points(depth, camera, labels, scores, 5.0, stride=0)
    with pytest.raises(ValueError, match="max_depth_m"):
        labelled_points(depth, camera, labels, scores, 0.0)
    with pytest.raises(ValueError, match="labels shape"):
        labelled_points(depth, camera, labels[:3], scores, 5.0)
    with pytest.raises(ValueError, match="scores shape"):
        labelled_points(depth, camera, labels, scores[:, :3], 5.0)
    with pytest.raises(ValueError, match="float metres"):
        labelled_points(depth.astype(np.uint16), camera, labels, scores, 5.0)
    with pytest.raises(ValueError, match="depth_m"):
        labelled_points(depth[0], camera, labels, scores, 5.0)


def _scene_with_segments(rng):
    """A 60x80 image, random depth with holes, and segments: two blobs, a single pixel, one
    segment over pixels without depth."""
    height, width = 60, 80
    camera = Intrinsics(70.0, 70.0, 39.5, 29.5, width, height)
    depth = rng.uniform(0.5, 3.0, (height, width)).astype(np.float32)
    depth[rng.random((height, width)) < 0.1] = 0
    depth[40:50, 60:70] = 0
    rows, cols = np.mgrid[0:height, 0:width]
    masks = [
        (rows - 20) ** 2 + (cols - 20) ** 2 < 150,
        (rows > 35) & (cols > 10) & (cols < 50) & ((rows + cols) % 3 > 0),
        (rows == 5) & (cols == 70),
        (rows >= 42) & (rows < 48) & (cols >= 62) & (cols < 68),
    ]
    depth[5, 70] = 1.25
    points = labelled_points(
        depth, camera, np.zeros((height, width), np.uint16), np.ones((height, width)), 5.0
    )
    return points, masks


@pytest.mark.parametrize("percentile", [5.0, 0.0, 25.0, 50.0])
def test_segment_geometries_match_numpy_per_segment(percentile):
    points, masks = _scene_with_segments(np.random.default_rng(3))
    geometries = segment_geometries(points, [_segment(m) for m in masks], (60, 80), percentile)
    assert len(geometries) == 4
    assert geometries[3] is None
    for mask, geometry in zip(masks[:3], geometries[:3], strict=True):
        member = points.xyz[mask.ravel()[points.pixels]]
        assert geometry.points == len(member)
        np.testing.assert_allclose(geometry.centroid, member.mean(axis=0), atol=1e-6)
        np.testing.assert_allclose(
            geometry.box_min, np.percentile(member, percentile, axis=0), atol=1e-6
        )
        np.testing.assert_allclose(
            geometry.box_max, np.percentile(member, 100 - percentile, axis=0), atol=1e-6
        )
        assert geometry.centroid.dtype == geometry.box_min.dtype == np.float32
    assert geometries[2].points == 1


def test_segment_geometries_with_no_segments_or_no_points():
    points, masks = _scene_with_segments(np.random.default_rng(4))
    assert segment_geometries(points, [], (60, 80)) == []
    empty = labelled_points(
        np.zeros((60, 80), np.float32),
        Intrinsics(70.0, 70.0, 39.5, 29.5, 80, 60),
        np.zeros((60, 80), np.uint16),
        np.ones((60, 80), np.float32),
        5.0,
    )
    assert segment_geometries(empty, [_segment(m) for m in masks], (60, 80)) == [None] * 4


def test_flying_pixels_do_not_move_the_percentile_box():
    """A 40x40 plate at 1 m whose 12 border pixels fly out to 10 m along their rays."""
    camera = Intrinsics(500.0, 500.0, 49.5, 49.5, 100, 100)
    depth = np.full((100, 100), 3.0, np.float32)
    depth[30:70, 30:70] = 1.0
    mask = np.zeros((100, 100), bool)
    mask[30:70, 30:70] = True
    segment = _segment(mask)
    labels = np.zeros((100, 100), np.uint16)
    scores = np.ones((100, 100), np.float32)
    clean = labelled_points(depth, camera, labels, scores, 20.0)
    flying = depth.copy()
    flying[30, 30:70:10] = 10.0
    flying[30:70:10, 69] = 10.0
    flying[69, 35:70:10] = 10.0
    noisy = labelled_points(flying, camera, labels, scores, 20.0)
    before = segment_geometries(clean, [segment], (100, 100))[0]
    after = segment_geometries(noisy, [segment], (100, 100))[0]
    pixel_at_1m = 1.0 / camera.fx
    np.testing.assert_allclose(after.box_min, before.box_min, atol=2 * pixel_at_1m)
    np.testing.assert_allclose(after.box_max, before.box_max, atol=2 * pixel_at_1m)
    extremes = segment_geometries(noisy, [segment], (100, 100), percentile=0.0)[0]
    assert extremes.box_max[2] == pytest.approx(10.0)
    assert extremes.box_max[0] - before.box_max[0] > 0.3
    assert extremes.box_min[1] - before.box_min[1] < -0.3


def test_segment_id_map_and_validation():
    mask = np.zeros((6, 8), bool)
    mask[1:3, 2:5] = True
    other = np.zeros((6, 8), bool)
    other[4, 0] = True
    ids = segment_id_map([_segment(mask), _segment(other)], (6, 8))
    expected = np.full((6, 8), -1, np.int32)
    expected[mask] = 0
    expected[other] = 1
    np.testing.assert_array_equal(ids, expected)
    bad_mask = _segment(mask)
    bad_mask.mask = bad_mask.mask[:1]
    with pytest.raises(ValueError, match="mask shape"):
        segment_id_map([bad_mask], (6, 8))
    outside = _segment(mask)
    outside.box = (6, 1, 3, 2)
    with pytest.raises(ValueError, match="outside"):
        segment_id_map([outside], (6, 8))
    points, masks = _scene_with_segments(np.random.default_rng(5))
    with pytest.raises(ValueError, match="percentile"):
        segment_geometries(points, [_segment(masks[0])], (60, 80), percentile=60.0)
    with pytest.raises(ValueError, match="beyond"):
        segment_geometries(points, [_segment(masks[0])], (30, 40))
