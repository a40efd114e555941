"""Depth to 3D: labelled points and per-segment 3D in the colour camera's optical frame.

Conventions (ROS REP 103/105 optical frame, sensor_msgs/CameraInfo): x right, y down, z forward,
metres; pixel (u, v) has its centre at integer coordinates (u, v), so a point at depth z
projects to u = fx * x / z + cx. Depth is registered to the colour image (each depth pixel looks
along the ray of the colour pixel at the same place in the image), possibly at another
resolution: its intrinsics are the colour camera's scaled to its size (Intrinsics.scaled).

A point cloud and the per-segment statistics want different densities: call labelled_points
once with stride 1 for segment_geometries and once with a larger stride for the cloud (the two
calls cost about as much as one at stride 1 and one proportionally smaller).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ovseg_ros.engine.segmentation import UNLABELED, Segment, Segmentation


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of a width x height image: focal lengths fx, fy and principal point
    cx, cy, in pixels (CameraInfo's K = [fx 0 cx; 0 fy cy; 0 0 1]); width, height >= 1."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_k(cls, k: Sequence[float], width: int, height: int) -> Intrinsics:
        """Intrinsics from CameraInfo's row-major 3x3 K (9 numbers) of a width x height image.

        Raises ValueError unless fx, fy are finite and > 0, cx, cy finite, width, height >= 1.
        """
        values = [float(value) for value in k]
        if len(values) != 9:
            raise ValueError(f"K must have 9 numbers (row-major 3x3), got {len(values)}")
        fx, cx, fy, cy = values[0], values[2], values[4], values[5]
        if not (math.isfinite(fx) and math.isfinite(fy) and fx > 0 and fy > 0):
            raise ValueError(f"K needs finite focal lengths > 0, got fx={fx}, fy={fy}")
        if not (math.isfinite(cx) and math.isfinite(cy)):
            raise ValueError(f"K needs a finite principal point, got cx={cx}, cy={cy}")
        _check_size(width, height)
        return cls(fx=fx, fy=fy, cx=cx, cy=cy, width=int(width), height=int(height))

    def scaled(self, width: int, height: int) -> Intrinsics:
        """The same camera for a registered image of width x height pixels (same field of view).

        With pixel centres at integer coordinates, image coordinate u maps to (u + 0.5) * sx - 0.5
        (sx = width / self.width), so fx' = fx * sx and cx' = (cx + 0.5) * sx - 0.5; y alike.
        """
        _check_size(width, height)
        sx = width / self.width
        sy = height / self.height
        return Intrinsics(
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
            width=int(width),
            height=int(height),
        )


@dataclass
class LabelledPoints:
    """Points of the labelled pixels with valid depth, N of them, in the optical frame.

    xyz: (N, 3) float32 metres; labels: (N,) uint32 class ids (never UNLABELED);
    scores: (N,) float32 in [0, 1], the pixel's class probability; pixels: (N,) int64 flat index
    v * W + u of the colour pixel each point's label comes from.
    """

    xyz: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    pixels: np.ndarray


@dataclass
class SegmentGeometry:
    """A segment's 3D in the optical frame, from its points with valid depth.

    centroid: (3,) float32 metres, the points' mean; box_min, box_max: (3,) float32 metres,
    per-axis low and high percentiles of the points (a robust extent: a few flying pixels at the
    border do not move it); points: how many points with valid depth the segment has (>= 1).
    """

    centroid: np.ndarray
    box_min: np.ndarray
    box_max: np.ndarray
    points: int


def _check_size(width: int, height: int) -> None:
    """Raises ValueError unless width and height are integers >= 1."""
    if int(width) != width or int(height) != height or width < 1 or height < 1:
        raise ValueError(f"image size must be integers >= 1, got {width} x {height}")


def colour_index(depth_index: np.ndarray, depth_size: int, colour_size: int) -> np.ndarray:
    """Colour pixel index (row or column) containing the centre of each depth pixel index.

    Depth pixel i has its centre at colour coordinate (i + 0.5) * colour_size / depth_size - 0.5;
    colour pixel j covers [j - 0.5, j + 0.5), so the index is floor((2i + 1) * C / (2D)), exact
    in integers and always within [0, colour_size - 1]. depth_index: int array; returns int64.
    """
    return (2 * np.asarray(depth_index, dtype=np.int64) + 1) * colour_size // (2 * depth_size)


def labelled_points(
    depth_m: np.ndarray,
    intrinsics: Intrinsics,
    labels: np.ndarray,
    scores: np.ndarray,
    max_depth_m: float,
    stride: int = 1,
) -> LabelledPoints:
    """Back-projects the labelled depth pixels with valid depth to points in the optical frame.

    depth_m: (h, w) float metres, registered to the colour image, any resolution; 0, NaN, inf,
    negative and > max_depth_m are invalid and left out. intrinsics: the colour image's, whose
    size is labels.shape; each depth pixel is back-projected along its own ray
    (intrinsics.scaled(w, h)) and takes label and score from the colour pixel containing its
    centre (colour_index). labels: (H, W) uint16 class ids, UNLABELED pixels are left out;
    scores: (H, W) float32. stride >= 1 keeps depth rows and columns 0, stride, 2 * stride, ...
    Points come in depth raster order (row-major).
    """
    depth_m = np.asarray(depth_m)
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if depth_m.ndim != 2 or depth_m.size == 0:
        raise ValueError(f"depth_m must be a non-empty (h, w) array, got shape {depth_m.shape}")
    if not np.issubdtype(depth_m.dtype, np.floating):
        raise ValueError(
            f"depth_m must hold float metres, got dtype {depth_m.dtype} (convert 16UC1 millimetres)"
        )
    colour_shape = (intrinsics.height, intrinsics.width)
    if labels.shape != colour_shape:
        raise ValueError(
            f"labels shape {labels.shape} must equal the intrinsics' image size {colour_shape}"
        )
    if scores.shape != colour_shape:
        raise ValueError(f"scores shape {scores.shape} must equal labels shape {colour_shape}")
    if not (math.isfinite(max_depth_m) and max_depth_m > 0):
        raise ValueError(f"max_depth_m must be finite and > 0, got {max_depth_m}")
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be an integer >= 1, got {stride}")
    stride = int(stride)

    height, width = depth_m.shape
    colour_height, colour_width = colour_shape
    rows = np.arange(0, height, stride)
    cols = np.arange(0, width, stride)
    colour_rows = colour_index(rows, height, colour_height)
    colour_cols = colour_index(cols, width, colour_width)
    depth = depth_m[::stride, ::stride]
    if depth_m.shape == colour_shape:
        grid_labels = labels[::stride, ::stride]
    else:
        grid_labels = labels[colour_rows[:, None], colour_cols[None, :]]
    valid = (depth > 0) & (depth <= max_depth_m) & (grid_labels != UNLABELED)
    point_rows, point_cols = np.nonzero(valid)
    z = depth[valid]
    pixels = colour_rows[point_rows] * colour_width + colour_cols[point_cols]

    camera = intrinsics.scaled(width, height)
    x_per_z = (cols - camera.cx) / camera.fx
    y_per_z = (rows - camera.cy) / camera.fy
    xyz = np.empty((z.size, 3), dtype=np.float32)
    xyz[:, 0] = x_per_z[point_cols] * z
    xyz[:, 1] = y_per_z[point_rows] * z
    xyz[:, 2] = z
    return LabelledPoints(
        xyz=xyz,
        labels=grid_labels[valid].astype(np.uint32),
        scores=scores.ravel()[pixels].astype(np.float32, copy=False),
        pixels=pixels,
    )


def segment_id_map(segments: Sequence[Segment], image_shape: tuple[int, int]) -> np.ndarray:
    """(H, W) int32 map: index of the segment covering each pixel, -1 where none does.

    Segments are expected disjoint (as the connected regions of a label map are); where they
    overlap, the later one wins. Raises ValueError for a box outside the image or a mask that
    does not match its box.
    """
    height, width = image_shape
    ids = np.full((height, width), -1, dtype=np.int32)
    for index, segment in enumerate(segments):
        x, y, box_width, box_height = segment.box
        if x < 0 or y < 0 or x + box_width > width or y + box_height > height:
            raise ValueError(f"segment {index} box {segment.box} lies outside {width} x {height}")
        if segment.mask.shape != (box_height, box_width):
            raise ValueError(
                f"segment {index} mask shape {segment.mask.shape} does not match its box "
                f"{segment.box} (expected {(box_height, box_width)})"
            )
        ids[y : y + box_height, x : x + box_width][segment.mask] = index
    return ids


def _sortable_bits(values: np.ndarray) -> np.ndarray:
    """float32 (N,) -> uint32 (N,) whose unsigned order is the floats' order (no NaN)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    negative = (bits >> np.uint32(31)).astype(bool)
    return bits ^ np.where(negative, np.uint32(0xFFFFFFFF), np.uint32(0x80000000))


def _float_from_sortable(bits: np.ndarray) -> np.ndarray:
    """Inverse of _sortable_bits: uint32 (N,) -> float32 (N,)."""
    bits = bits.astype(np.uint32)
    was_positive = (bits >> np.uint32(31)).astype(bool)
    return (bits ^ np.where(was_positive, np.uint32(0x80000000), np.uint32(0xFFFFFFFF))).view(
        np.float32
    )


def _grouped_statistics(
    values: np.ndarray,
    groups: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    quantiles: tuple[float, ...],
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Mean and linear-interpolation percentiles (np.percentile's default) of values per group.

    values: (N,) float32; groups: (N,) int32 group ids; starts, counts: (G,) int64 where the
    values of each wanted group start in group-major order and how many there are (counts > 0,
    all N values belong to a wanted group). quantiles: fractions in [0, 1]. Returns the (G,)
    float64 means and one (G,) float64 array per quantile. One sort of (group, value) packed
    into a uint64 key; no loop over points or groups.
    """
    keys = (groups.astype(np.uint64) << np.uint64(32)) | _sortable_bits(values)
    keys.sort()
    ordered = _float_from_sortable(keys & np.uint64(0xFFFFFFFF)).astype(np.float64)
    means = np.add.reduceat(ordered, starts) / counts
    results = []
    for quantile in quantiles:
        rank = quantile * (counts - 1)
        low = np.floor(rank).astype(np.int64)
        high = np.minimum(low + 1, counts - 1)
        t = rank - low
        a = ordered[starts + low]
        b = ordered[starts + high]
        difference = b - a
        results.append(np.where(t >= 0.5, b - difference * (1 - t), a + difference * t))
    return means, results


def segment_geometries(
    points: LabelledPoints,
    segments: list[Segment],
    image_shape: tuple[int, int],
    percentile: float = 5.0,
) -> list[SegmentGeometry | None]:
    """3D of each segment from the points whose colour pixel lies in its mask.

    points: from labelled_points on the colour image of image_shape (H, W); segments: boxes and
    box-sized masks in that image, expected disjoint. percentile in [0, 50]: box_min and box_max
    are the per-axis percentile and 100 - percentile percentiles (np.percentile's linear
    interpolation; 0 gives min and max). Returns one entry per segment, in order, None for a
    segment without any point.
    """
    if not (0.0 <= percentile <= 50.0):
        raise ValueError(f"percentile must be within [0, 50], got {percentile}")
    height, width = image_shape
    if points.pixels.size and int(points.pixels.max()) >= height * width:
        raise ValueError(f"points index pixels beyond the {width} x {height} image")
    ids = segment_id_map(segments, image_shape)
    point_ids = ids.ravel()[points.pixels]
    member = point_ids >= 0
    point_ids = point_ids[member]
    xyz = points.xyz[member]

    counts = np.bincount(point_ids, minlength=len(segments))
    present = np.flatnonzero(counts)
    starts = (np.cumsum(counts) - counts)[present]
    quantiles = (percentile / 100.0, (100.0 - percentile) / 100.0)
    centroids = np.empty((present.size, 3))
    lows = np.empty((present.size, 3))
    highs = np.empty((present.size, 3))
    for axis in range(3):
        centroids[:, axis], (lows[:, axis], highs[:, axis]) = _grouped_statistics(
            xyz[:, axis], point_ids, starts, counts[present], quantiles
        )

    geometries: list[SegmentGeometry | None] = [None] * len(segments)
    for row, index in enumerate(present.tolist()):
        geometries[index] = SegmentGeometry(
            centroid=centroids[row].astype(np.float32),
            box_min=lows[row].astype(np.float32),
            box_max=highs[row].astype(np.float32),
            points=int(counts[index]),
        )
    return geometries


def add_segment_geometry(
    segmentation: Segmentation, depth_m: np.ndarray, intrinsics: Intrinsics, max_depth_m: float
) -> LabelledPoints:
    """Gives every segment of `segmentation` its 3D (segment_geometries over all its pixels with
    valid depth; None where it has none) and sets has_depth. depth_m: (h, w) float32 metres
    registered to the segmentation's image, intrinsics: the colour camera's at the labels' size.
    Returns the labelled points at stride 1, for a cloud at that stride."""
    points = labelled_points(
        depth_m, intrinsics, segmentation.labels, segmentation.scores, max_depth_m
    )
    geometries = segment_geometries(points, segmentation.segments, segmentation.labels.shape)
    for segment, geometry in zip(segmentation.segments, geometries, strict=True):
        segment.geometry = geometry
    segmentation.has_depth = True
    return points
