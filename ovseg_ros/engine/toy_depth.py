"""Depth for the toy world: an exact depth image and what an RGB-D sensor would give for it.

The scene (toy_world.generate_scene) becomes a 3D layout seen by a pinhole camera with a 60
degree horizontal field of view: the background is a plane seen obliquely (a floor or a wall,
depth 1.9 to 4.2 m, increasing across the image along a random row or column direction) and
each shape is a fronto-parallel plate in front of it, 0.6 to 1.8 m, later shapes nearer (the
image's occlusion agrees with the depth order). The sensor image adds depth noise growing with
the square of the depth (as a stereo camera's) and the holes real sensors have: a 1 to 2 px band
on the far side of depth discontinuities (occlusion shadow), dark surfaces, and a few small
random blobs. Depth is in the colour camera's optical frame, registered to the colour image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ovseg_ros.engine.geometry import Intrinsics
from ovseg_ros.engine.toy_world import ToyScene

HORIZONTAL_FOV_DEG = 60.0
BACKGROUND_NEAR_M = (1.9, 2.3)
"""Range of the background plane's nearest depth (at one image border), metres."""
BACKGROUND_FAR_M = (3.4, 4.2)
"""Range of the background plane's farthest depth (at the opposite border), metres."""
OBJECT_RANGE_M = (0.6, 1.8)
"""Plates lie within this depth range, metres; shape 1 farthest, shape K nearest."""
NOISE_COEFFICIENT = 0.001
"""Sensor noise sigma = NOISE_COEFFICIENT * z**2 metres at depth z metres (1 mm at 1 m)."""
EDGE_JUMP_M = 0.05
"""A pixel farther than a neighbour by more than this lies on the far side of a discontinuity."""
DARK_LUMA = 24.0
"""Surfaces darker than this (luma of the 5x5-blurred image, 0-255) return no depth."""


@dataclass
class DepthScene:
    """Depth of one toy scene, all (H, W) arrays registered to the scene's image.

    intrinsics: the camera, of the scene's size.
    depth_m: float32 metres, exact (no noise, no holes): background plane or object plate.
    background_m: float32 metres, the background plane everywhere (also behind the objects).
    sensor_m: float32 metres as an RGB-D sensor gives it: noisy, 0 in holes.
    sensor_mm: uint16 millimetres, round(sensor_m * 1000), 0 in holes (16UC1 depth images).
    object_depths_m: (K,) float32 metres, the plate depth of instance k at index k - 1.
    """

    intrinsics: Intrinsics
    depth_m: np.ndarray
    background_m: np.ndarray
    sensor_m: np.ndarray
    sensor_mm: np.ndarray
    object_depths_m: np.ndarray


def toy_intrinsics(width: int, height: int, rng: np.random.Generator) -> Intrinsics:
    """A square-pixel pinhole with HORIZONTAL_FOV_DEG, principal point within 1% of the centre."""
    focal = (width / 2) / math.tan(math.radians(HORIZONTAL_FOV_DEG) / 2)
    return Intrinsics(
        fx=focal,
        fy=focal,
        cx=(width - 1) / 2 + rng.uniform(-0.01, 0.01) * width,
        cy=(height - 1) / 2 + rng.uniform(-0.01, 0.01) * height,
        width=width,
        height=height,
    )


def _background_plane(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W) float32 metres of a plane whose depth grows from one border to the opposite one.

    Inverse depth is linear in the pixel coordinates, as it is for any plane under a pinhole.
    """
    near = rng.uniform(*BACKGROUND_NEAR_M)
    far = rng.uniform(*BACKGROUND_FAR_M)
    along_rows = bool(rng.integers(2))
    size = height if along_rows else width
    t = np.arange(size) / max(size - 1, 1)
    if rng.integers(2):
        t = 1 - t
    inverse = 1 / near + t * (1 / far - 1 / near)
    line = (1 / inverse).astype(np.float32)
    if along_rows:
        return np.repeat(line[:, None], width, axis=1)
    return np.repeat(line[None, :], height, axis=0)


def _object_depths(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count,) float32 metres, strictly decreasing within OBJECT_RANGE_M (later shapes nearer).

    Shape k gets a random depth inside the k-th of count equal slices of the range, away from
    the slice borders, so neighbouring plates differ by at least 30% of a slice.
    """
    low, high = OBJECT_RANGE_M
    slot = (high - low) / max(count, 1)
    offsets = np.arange(count) + rng.uniform(0.15, 0.85, count)
    return (high - slot * offsets).astype(np.float32)


def _sensor_holes(rng: np.random.Generator, depth_m: np.ndarray, image: np.ndarray) -> np.ndarray:
    """(H, W) bool, where the sensor returns no depth.

    A band on the far side of discontinuities (1 px everywhere, 2 px at random half of the
    places), dark surfaces, and 2 to 5 small round blobs of radius 1.5 to 4 px at 240 px height.
    """
    height, width = depth_m.shape
    nearest_1 = cv2.erode(depth_m, np.ones((3, 3), np.uint8))
    nearest_2 = cv2.erode(depth_m, np.ones((5, 5), np.uint8))
    holes = depth_m - nearest_1 > EDGE_JUMP_M
    holes |= (depth_m - nearest_2 > EDGE_JUMP_M) & (rng.random((height, width)) < 0.5)

    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    holes |= cv2.blur(luma, (5, 5)) < DARK_LUMA

    blobs = np.zeros((height, width), dtype=np.uint8)
    scale = height / 240
    for _ in range(int(rng.integers(2, 6))):
        center = (int(rng.integers(width)), int(rng.integers(height)))
        radius = max(1, round(rng.uniform(1.5, 4.0) * scale))
        cv2.circle(blobs, center, radius, 1, thickness=-1)
    return holes | blobs.astype(bool)


def generate_depth(
    scene: ToyScene, seed: int | None = None, noise_coefficient: float = NOISE_COEFFICIENT
) -> DepthScene:
    """The depth of `scene`, deterministic per seed (scene.seed when None).

    noise_coefficient: sensor noise sigma = noise_coefficient * z**2 metres; 0 gives a sensor
    image with holes but without noise.
    """
    seed = scene.seed if seed is None else seed
    rng = np.random.default_rng([seed, 17])
    height, width = scene.instances.shape
    intrinsics = toy_intrinsics(width, height, rng)
    background = _background_plane(rng, height, width)
    count = len(scene.shapes)
    object_depths = _object_depths(rng, count)

    plates = np.concatenate([np.zeros(1, dtype=np.float32), object_depths])[scene.instances]
    depth = np.where(scene.instances > 0, plates, background).astype(np.float32)
    noise = rng.standard_normal((height, width)).astype(np.float32)
    noisy = depth + noise * np.float32(noise_coefficient) * depth * depth
    holes = _sensor_holes(rng, depth, scene.image)
    sensor_m = np.where(holes, np.float32(0), noisy).astype(np.float32)
    sensor_mm = np.round(sensor_m * 1000).astype(np.uint16)
    return DepthScene(
        intrinsics=intrinsics,
        depth_m=depth,
        background_m=background,
        sensor_m=sensor_m,
        sensor_mm=sensor_mm,
        object_depths_m=object_depths,
    )


def instance_geometry(
    depth: DepthScene, instances: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact 3D of instance k's visible pixels, from depth.depth_m, in the optical frame.

    instances: (H, W) int, the scene's instance map. Returns the centroid (mean), the per-axis
    minimum and maximum of the back-projected pixel centres: (3,) float64 metres each.
    Raises ValueError when instance k has no pixel.
    """
    rows, cols = np.nonzero(instances == k)
    if rows.size == 0:
        raise ValueError(f"instance {k} has no visible pixel")
    camera = depth.intrinsics
    z = depth.depth_m[rows, cols].astype(np.float64)
    xyz = np.stack(
        [(cols - camera.cx) / camera.fx * z, (rows - camera.cy) / camera.fy * z, z], axis=1
    )
    return xyz.mean(axis=0), xyz.min(axis=0), xyz.max(axis=0)
