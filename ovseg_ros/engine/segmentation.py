"""The result of segmenting one image: everything any consumer or publisher needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from ovseg_ros.engine.geometry import SegmentGeometry

UNLABELED = 65535
"""Label value of pixels no class claims (uint16 maximum, as in SegmentationResult.UNLABELED)."""


@dataclass
class Segment:
    """A 4-connected region of the label map whose pixels share one class.

    box: (x, y, width, height) in image pixels; mask: (height, width) bool, box-sized;
    score: mean probability of class_id over the region's pixels, in [0, 1];
    geometry: the region's 3D from its pixels with valid depth, None when it has none (no depth
    with the image, or no valid reading inside the region).
    """

    class_id: int
    class_name: str
    score: float
    box: tuple[int, int, int, int]
    mask: np.ndarray
    area: int
    geometry: SegmentGeometry | None = None


@dataclass
class Segmentation:
    """Segmentation of one image under one vocabulary.

    labels: (H, W) uint16, class index into class_names or UNLABELED.
    scores: (H, W) float32, probability of the pixel's best class, in [0, 1].
    segments: connected regions of `labels`, largest first.
    timings_ms: wall time of each stage in milliseconds, in pipeline order.
    has_depth: True when a depth image with camera intrinsics came with the image; each
    segment's geometry then says whether it has valid depth. False: no segment has geometry.
    known: (H, W) float32 in [0, 1], the probability that the pixel shows one of the
    vocabulary's classes (rejection.py, averaged over the masks covering it like the class
    scores), or None when not computed (SegmenterConfig.rejection 0 and known_map off).
    unknown: (H, W) bool, the pixels set to UNLABELED because known < SegmenterConfig.rejection
    (the open-set "unknown"; not pixels no mask covers or below unlabeled_threshold), or None
    when rejection is off.
    """

    labels: np.ndarray
    scores: np.ndarray
    class_names: list[str]
    vocabulary_version: int
    segments: list[Segment]
    timings_ms: dict[str, float] = field(default_factory=dict)
    has_depth: bool = False
    known: np.ndarray | None = None
    unknown: np.ndarray | None = None

    @property
    def rejected_pixels(self) -> int:
        """How many pixels open-set rejection left unlabeled (0 when it is off)."""
        return 0 if self.unknown is None else int(np.count_nonzero(self.unknown))


def extract_segments(
    labels: np.ndarray, scores: np.ndarray, class_names: list[str], min_area: int = 1
) -> list[Segment]:
    """Splits a label map into 4-connected single-class regions of at least `min_area` pixels.

    labels: (H, W) uint16; scores: (H, W) float32. Returns segments sorted by area, largest first.
    """
    segments: list[Segment] = []
    for class_id in np.unique(labels):
        if class_id == UNLABELED:
            continue
        count, components, stats, _ = cv2.connectedComponentsWithStats(
            (labels == class_id).astype(np.uint8), connectivity=4
        )
        for index in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[index])
            if area < min_area:
                continue
            mask = components[y : y + h, x : x + w] == index
            segments.append(
                Segment(
                    class_id=int(class_id),
                    class_name=class_names[class_id],
                    score=float(scores[y : y + h, x : x + w][mask].mean()),
                    box=(x, y, w, h),
                    mask=mask,
                    area=area,
                )
            )
    segments.sort(key=lambda s: s.area, reverse=True)
    return segments
