"""Per-frame cost of the segmenter node's 3D: what `SegmenterNode._publish` computes for a frame
with depth, timed part by part.

    tools/in_env.sh python tools/cloud_bench.py              # 20 repetitions per row
    tools/in_env.sh python tools/cloud_bench.py --repeats 3

Parts, in the node's order: depth in (`depth_to_metres` of a 16UC1 image and
`camera_info_to_intrinsics`, what `CameraStream.depth_for` does once the depth is paired),
the segments' 3D (`add_segment_geometry`: `labelled_points` at stride 1 and
`segment_geometries`), `labelled_points` at `points_stride` (only when it is above 1; at 1 the
node reuses the stride-1 points), then
`class_colors` and `points_to_cloud` (the node runs these two only while ~/points has a
subscriber). The frame: a 2 x 3 grid of toy-world scenes (toy_world, toy_depth) at the colour
size, each tile's background a class of its own alternating floor / wall, so that the label map
has about 30 segments (`extract_segments` with the node's min_segment_area 16); depth is the toy
sensor's (noise, holes at edges, dark surfaces and blobs), at the colour size or, nearest
neighbour, at half of it. Each cell is the median over the repetitions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovseg_ros.engine import toy_depth, toy_world  # noqa: E402
from ovseg_ros.engine.geometry import add_segment_geometry, labelled_points  # noqa: E402
from ovseg_ros.engine.render import class_colors  # noqa: E402
from ovseg_ros.engine.segmentation import Segment, Segmentation, extract_segments  # noqa: E402
from ovseg_ros.ros.conversions import (  # noqa: E402
    array_to_image,
    camera_info_to_intrinsics,
    depth_to_metres,
    points_to_cloud,
)

MAX_DEPTH_M = 10.0
"""The node's default max_depth_m."""
MAX_INPUT_PIXELS = 40_000_000
"""The node's default max_input_pixels."""
MIN_SEGMENT_AREA = 16
"""The node's default min_segment_area."""
GRID = (2, 3)
"""Rows and columns of toy scenes in one frame."""
CLASS_NAMES = ["floor", "wall", *toy_world.SHAPES]
"""Class ids: 0 and 1 the tiles' backgrounds, 2.. the toy shapes."""
PARTS = ("depth in", "segments' 3D", "points (stride)", "cloud")


@dataclass
class Frame:
    """One frame's node-side inputs of the 3D: labels, scores and segments at the colour size
    (H, W), the depth image message and the colour camera_info."""

    labels: np.ndarray
    scores: np.ndarray
    segments: list[Segment]
    depth: Image
    camera_info: CameraInfo


def make_frame(height: int, width: int, depth_scale: int, seed: int) -> Frame:
    """A GRID of toy scenes filling height x width, depth at 1 / depth_scale of that size."""
    rng = np.random.default_rng(seed)
    labels = np.empty((height, width), dtype=np.uint16)
    depth_mm = np.empty((height, width), dtype=np.uint16)
    rows = np.linspace(0, height, GRID[0] + 1).astype(int)
    cols = np.linspace(0, width, GRID[1] + 1).astype(int)
    for i in range(GRID[0]):
        for j in range(GRID[1]):
            top, bottom, left, right = rows[i], rows[i + 1], cols[j], cols[j + 1]
            scene = toy_world.generate_scene(seed + GRID[1] * i + j, bottom - top, right - left)
            background = (i + j) % 2
            labels[top:bottom, left:right] = np.where(
                scene.shape_labels == 0, background, scene.shape_labels.astype(np.uint16) + 1
            )
            depth_mm[top:bottom, left:right] = toy_depth.generate_depth(scene).sensor_mm
    if depth_scale > 1:
        size = (width // depth_scale, height // depth_scale)
        depth_mm = cv2.resize(depth_mm, size, interpolation=cv2.INTER_NEAREST)
    scores = rng.uniform(0.3, 1.0, (height, width)).astype(np.float32)
    intrinsics = toy_depth.toy_intrinsics(width, height, rng)
    header = Header(frame_id="camera")
    info = CameraInfo(header=header, width=width, height=height)
    info.k = [intrinsics.fx, 0.0, intrinsics.cx, 0.0, intrinsics.fy, intrinsics.cy, 0.0, 0.0, 1.0]
    return Frame(
        labels=labels,
        scores=scores,
        segments=extract_segments(labels, scores, CLASS_NAMES, MIN_SEGMENT_AREA),
        depth=array_to_image(depth_mm, "16UC1", header),
        camera_info=info,
    )


def timed(parts_ms: dict[str, float], part: str, step: Callable[[], object]) -> object:
    """step(), its wall time in milliseconds stored as parts_ms[part]."""
    started = time.perf_counter()
    value = step()
    parts_ms[part] = (time.perf_counter() - started) * 1e3
    return value


def one_pass(frame: Frame, stride: int) -> tuple[dict[str, float], int, int]:
    """The node's 3D of one frame: ms per part, points at stride 1, points in the cloud."""
    ms: dict[str, float] = {}
    depth_m, intrinsics = timed(
        ms,
        "depth in",
        lambda: (
            depth_to_metres(frame.depth, MAX_INPUT_PIXELS),
            camera_info_to_intrinsics(frame.camera_info),
        ),
    )
    segmentation = Segmentation(frame.labels, frame.scores, CLASS_NAMES, 1, frame.segments)
    points = timed(
        ms,
        "segments' 3D",
        lambda: add_segment_geometry(segmentation, depth_m, intrinsics, MAX_DEPTH_M),
    )
    dense_points = points.xyz.shape[0]
    if stride > 1:
        points = timed(
            ms,
            "points (stride)",
            lambda: labelled_points(
                depth_m, intrinsics, frame.labels, frame.scores, MAX_DEPTH_M, stride
            ),
        )
    header = frame.depth.header
    timed(ms, "cloud", lambda: points_to_cloud(points, class_colors(CLASS_NAMES), header))
    return ms, dense_points, points.xyz.shape[0]


def bench_row(
    height: int, width: int, depth_scale: int, stride: int, repeats: int, seed: int
) -> str:
    """One markdown table row: medians over `repeats` passes after one untimed pass."""
    frame = make_frame(height, width, depth_scale, seed)
    one_pass(frame, stride)
    runs = [one_pass(frame, stride) for _ in range(repeats)]
    cells = []
    for part in PARTS:
        values = [ms[part] for ms, _, _ in runs if part in ms]
        cells.append(f"{statistics.median(values):.1f}" if values else "-")
    total = statistics.median(sum(ms.values()) for ms, _, _ in runs)
    _, dense_points, cloud_points = runs[0]
    depth = f"{width // depth_scale}x{height // depth_scale}"
    return (
        f"| {width}x{height} | {depth} | {stride} | {len(frame.segments)} | {dense_points:,} | "
        f"{cloud_points:,} | " + " | ".join(cells) + f" | {total:.1f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed passes per row")
    parser.add_argument("--seed", type=int, default=1_000_100, help="first toy scene seed")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    rows = [
        (480, 640, 1, 1),
        (480, 640, 1, 2),
        (720, 1280, 1, 1),
        (720, 1280, 1, 2),
        (720, 1280, 2, 1),
        (720, 1280, 2, 2),
    ]
    print(
        f"median of {args.repeats} passes, ms; nproc {len(os.sched_getaffinity(0))}, "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )
    print()
    print(
        "| colour | depth | points_stride | segments | points (stride 1) | points in cloud | "
        + " | ".join(PARTS)
        + " | total |"
    )
    print("|" + "---|" * (7 + len(PARTS)))
    for height, width, depth_scale, stride in rows:
        print(bench_row(height, width, depth_scale, stride, args.repeats, args.seed), flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
