"""Depth of the toy world (ovseg_ros.engine.toy_depth) and per-object 3D measured on it."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest

from ovseg_ros.engine.geometry import labelled_points, segment_geometries
from ovseg_ros.engine.segmentation import Segment
from ovseg_ros.engine.toy_depth import (
    NOISE_COEFFICIENT,
    OBJECT_RANGE_M,
    generate_depth,
    instance_geometry,
)
from ovseg_ros.engine.toy_world import generate_scene

SEEDS = (0, 5, 13)


def _instance_segments(instances: np.ndarray) -> list[Segment]:
    """One Segment per instance k = 1..K of an instance map (H, W), in order."""
    segments = []
    for k in range(1, int(instances.max()) + 1):
        rows, cols = np.nonzero(instances == k)
        y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        mask = instances[y0:y1, x0:x1] == k
        box = (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
        segments.append(Segment(k, f"shape{k}", 1.0, box, mask, int(mask.sum())))
    return segments


def test_deterministic_per_seed():
    scene = generate_scene(4)
    first, second = generate_depth(scene), generate_depth(scene)
    for field in dataclasses.fields(first):
        a, b = getattr(first, field.name), getattr(second, field.name)
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b
    np.testing.assert_array_equal(generate_depth(scene, seed=4).sensor_m, first.sensor_m)
    assert not np.array_equal(generate_depth(scene, seed=5).sensor_m, first.sensor_m)


@pytest.mark.parametrize("seed", SEEDS)
def test_camera_and_layout(seed):
    scene = generate_scene(seed)
    depth = generate_depth(scene)
    height, width = scene.instances.shape
    camera = depth.intrinsics
    assert (camera.width, camera.height) == (width, height)
    assert math.degrees(2 * math.atan(width / 2 / camera.fx)) == pytest.approx(60.0)
    assert abs(camera.cx - (width - 1) / 2) <= 0.01 * width
    assert abs(camera.cy - (height - 1) / 2) <= 0.01 * height
    for image in (depth.depth_m, depth.background_m, depth.sensor_m):
        assert image.shape == (height, width) and image.dtype == np.float32
    assert depth.sensor_mm.dtype == np.uint16

    # The background is a plane seen obliquely: depth in 1.9..4.2 m, monotonic along one axis.
    background = depth.background_m
    assert 1.9 <= background.min() and background.max() <= 4.2
    assert background.max() - background.min() > 1.0
    along_rows = np.all(background == background[:, :1])
    line = background[:, 0] if along_rows else background[0]
    steps = np.diff(line)
    assert np.all(steps > 0) or np.all(steps < 0)

    # Plates in front of the background, later shapes nearer: occlusion agrees with depth.
    plates = depth.object_depths_m
    assert plates.shape == (len(scene.shapes),) and plates.dtype == np.float32
    assert np.all(np.diff(plates) < 0)
    assert OBJECT_RANGE_M[0] <= plates.min() and plates.max() <= OBJECT_RANGE_M[1]
    objects = scene.instances > 0
    np.testing.assert_array_equal(depth.depth_m[objects], plates[scene.instances[objects] - 1])
    assert np.all(depth.depth_m[objects] < depth.background_m[objects])
    np.testing.assert_array_equal(depth.depth_m[~objects], background[~objects])


@pytest.mark.parametrize("seed", SEEDS)
def test_sensor_holes_along_borders_and_noise_level(seed):
    scene = generate_scene(seed)
    depth = generate_depth(scene)
    holes = depth.sensor_m == 0
    np.testing.assert_array_equal(depth.sensor_mm == 0, holes)
    np.testing.assert_array_equal(
        depth.sensor_mm[~holes], np.round(depth.sensor_m[~holes] * 1000).astype(np.uint16)
    )

    # Far side of every object border: the background pixels next to an object have no depth,
    # about half of those 2 px away neither, and those 3 px away have depth.
    objects = (scene.instances > 0).astype(np.uint8)
    rings = [cv2.dilate(objects, np.ones((n, n), np.uint8)).astype(bool) for n in (1, 3, 5, 7)]
    assert np.all(holes[rings[1] & ~rings[0]])
    assert 0.3 < holes[rings[2] & ~rings[1]].mean() < 0.7
    assert holes[rings[3] & ~rings[2]].mean() < 0.05
    # Away from any discontinuity, only the few small blobs.
    edges = cv2.morphologyEx(
        scene.instances.astype(np.uint16), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)
    )
    far_from_edges = ~cv2.dilate((edges > 0).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(
        bool
    )
    assert holes[far_from_edges].mean() < 0.01

    # Noise: sigma = 0.001 * z^2 per pixel.
    valid = ~holes
    z = depth.depth_m[valid].astype(np.float64)
    normalised = (depth.sensor_m[valid] - z) / (NOISE_COEFFICIENT * z**2)
    assert abs(normalised.mean()) < 0.05
    assert 0.95 < normalised.std() < 1.05
    noiseless = generate_depth(scene, noise_coefficient=0.0)
    np.testing.assert_array_equal(noiseless.sensor_m == 0, holes)
    np.testing.assert_array_equal(noiseless.sensor_m[valid], depth.depth_m[valid])


def test_dark_surfaces_give_holes():
    scene = generate_scene(0)
    image = scene.image.copy()
    image[100:140, 200:260] = 5
    depth = generate_depth(dataclasses.replace(scene, image=image))
    assert np.all(depth.sensor_m[103:137, 203:257] == 0)


def test_instance_geometry_is_the_exact_back_projection():
    scene = generate_scene(0)
    depth = generate_depth(scene)
    centroid, low, high = instance_geometry(depth, scene.instances, 1)
    camera = depth.intrinsics
    rows, cols = np.nonzero(scene.instances == 1)
    z = float(depth.object_depths_m[0])
    assert centroid[2] == pytest.approx(z) and low[2] == pytest.approx(z)
    assert centroid[0] == pytest.approx((cols.mean() - camera.cx) / camera.fx * z)
    assert low[0] == pytest.approx((cols.min() - camera.cx) / camera.fx * z)
    assert high[1] == pytest.approx((rows.max() - camera.cy) / camera.fy * z)
    with pytest.raises(ValueError, match="no visible pixel"):
        instance_geometry(depth, scene.instances, 99)


@pytest.mark.parametrize("seed", SEEDS)
def test_segment_geometries_on_true_instance_masks(seed):
    scene = generate_scene(seed)
    depth = generate_depth(scene)
    noiseless = generate_depth(scene, noise_coefficient=0.0)
    labels = scene.instances.astype(np.uint16)
    scores = np.ones(labels.shape, np.float32)
    segments = _instance_segments(scene.instances)
    shape = labels.shape
    expected = [instance_geometry(depth, scene.instances, k) for k in range(1, len(segments) + 1)]

    def measure(depth_m, percentile=5.0):
        points = labelled_points(depth_m, depth.intrinsics, labels, scores, 10.0)
        return segment_geometries(points, segments, shape, percentile)

    exact = measure(depth.depth_m, percentile=0.0)
    for geometry, (centroid, low, high) in zip(exact, expected, strict=True):
        np.testing.assert_allclose(geometry.centroid, centroid, atol=1e-5)
        np.testing.assert_allclose(geometry.box_min, low, atol=1e-5)
        np.testing.assert_allclose(geometry.box_max, high, atol=1e-5)

    # The sensor loses a band along occluded borders, which moves a partly hidden object's
    # centroid by up to about 2 cm (17 mm over the first 150 seeds); on the pixels the sensor
    # sees, the centroid is exact up to the noise and the millimetre rounding.
    seen = np.where(noiseless.sensor_m == 0, 0, scene.instances)
    expected_seen = [instance_geometry(depth, seen, k) for k in range(1, len(segments) + 1)]
    sensor_cases = (
        (noiseless.sensor_m, 0.002),
        (noiseless.sensor_mm.astype(np.float32) / 1000, 0.002),
        (depth.sensor_m, 0.01),
        (depth.sensor_mm.astype(np.float32) / 1000, 0.01),
    )
    for depth_m, tolerance in sensor_cases:
        measured = measure(depth_m)
        for geometry, seen_geometry, (centroid, low, high) in zip(
            measured, expected_seen, expected, strict=True
        ):
            assert np.abs(geometry.centroid - seen_geometry[0]).max() < tolerance
            assert np.abs(geometry.centroid - centroid).max() < 0.025
            # The percentile box lies within the exact extent, give or take the noise.
            assert np.all(geometry.box_min > low - 0.01)
            assert np.all(geometry.box_max < high + 0.01)
