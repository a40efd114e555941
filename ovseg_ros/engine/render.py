"""Overlay drawing: stable class colors, alpha-blended label map, segment contours, class names.

A class's color depends on its name only (hashed), so "chair" keeps its color across vocabulary
changes and between runs.
"""

from __future__ import annotations

import colorsys
import hashlib

import cv2
import numpy as np

from ovseg_ros.engine.segmentation import UNLABELED, Segment, Segmentation

FONT = cv2.FONT_HERSHEY_SIMPLEX
LABEL_MIN_AREA_FRACTION = 0.002
"""Segments smaller than this fraction of the image get a contour but no name."""


def class_color(name: str) -> tuple[int, int, int]:
    """The RGB color of a class name: hue, saturation and value from a hash of the name
    (case-insensitive), saturation in [0.55, 0.95] and value in [0.75, 1.0] so that colors are
    vivid and white text on a dark box stays readable next to them."""
    digest = hashlib.sha256(" ".join(name.split()).casefold().encode("utf-8")).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536.0
    saturation = 0.55 + 0.40 * digest[2] / 255.0
    value = 0.75 + 0.25 * digest[3] / 255.0
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(red * 255), round(green * 255), round(blue * 255)


def class_colors(class_names: list[str]) -> np.ndarray:
    """(C, 3) uint8 RGB, one stable color per class name (see class_color)."""
    return np.array([class_color(n) for n in class_names], dtype=np.uint8).reshape(-1, 3)


def _label_anchor(segment: Segment) -> tuple[int, int]:
    """The segment's pixel farthest from its border (inside even for rings and crescents),
    as (x, y) image coordinates."""
    padded = np.pad(segment.mask.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return segment.box[0] + int(x) - 1, segment.box[1] + int(y) - 1


def render_overlay(image: np.ndarray, segmentation: Segmentation, alpha: float = 0.5) -> np.ndarray:
    """image: (H, W, 3) uint8 RGB and its segmentation -> (H, W, 3) uint8 RGB overlay.

    Labeled pixels are blended with their class color (alpha: opacity of the color, in [0, 1]);
    pixels rejected as unknown (Segmentation.unknown) show the image in grey; other unlabeled
    pixels keep the image. Every listed segment gets a contour in its class color;
    segments of at least LABEL_MIN_AREA_FRACTION of the image get their class name, in white
    on a dark box at the segment's innermost point, unless it would cover an earlier name
    (segments are drawn largest first). Text size scales with the image (about 14 px tall at
    640x480, at least 9 px).
    """
    if image.shape[:2] != segmentation.labels.shape:
        raise ValueError(
            f"image is {image.shape[:2]} but the segmentation's labels are "
            f"{segmentation.labels.shape} (H, W)"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    height, width = segmentation.labels.shape
    colors = class_colors(segmentation.class_names)
    labeled = segmentation.labels != UNLABELED
    palette = np.zeros((UNLABELED + 1, 3), dtype=np.uint8)  # indexed by uint16 label
    palette[: len(colors)] = colors
    tint = palette[segmentation.labels]
    blended = cv2.addWeighted(np.ascontiguousarray(image), 1.0 - alpha, tint, alpha, 0.0)
    overlay = np.where(labeled[..., None], blended, image)
    if segmentation.unknown is not None:  # open-set "unknown": the image in grey
        grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        overlay = np.where(segmentation.unknown[..., None], grey, overlay)

    scale = min(height, width) / 480.0
    thickness = max(1, round(scale * 1.5))
    for segment in segmentation.segments:
        contours, _ = cv2.findContours(
            segment.mask.astype(np.uint8),
            cv2.RETR_LIST,
            cv2.CHAIN_APPROX_SIMPLE,
            offset=segment.box[:2],
        )
        color = tuple(int(c) for c in colors[segment.class_id])
        cv2.drawContours(overlay, contours, -1, color, thickness)

    font_scale = max(0.5 * scale, 0.35)
    font_thickness = max(1, round(scale))
    taken: list[tuple[int, int, int, int]] = []
    for segment in segmentation.segments:
        if segment.area < LABEL_MIN_AREA_FRACTION * height * width:
            continue
        (text_w, text_h), baseline = cv2.getTextSize(
            segment.class_name, FONT, font_scale, font_thickness
        )
        pad = max(2, round(3 * scale))
        x, y = _label_anchor(segment)
        box_w, box_h = text_w + 2 * pad, text_h + baseline + 2 * pad
        left = min(max(x - box_w // 2, 0), max(width - box_w, 0))
        top = min(max(y - box_h // 2, 0), max(height - box_h, 0))
        box = (left, top, left + box_w, top + box_h)
        if any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in taken):
            continue
        taken.append(box)
        region = overlay[top : box[3], left : box[2]]
        region[:] = (region.astype(np.float32) * 0.35).astype(np.uint8)
        cv2.putText(
            overlay,
            segment.class_name,
            (left + pad, top + pad + text_h),
            FONT,
            font_scale,
            (255, 255, 255),
            font_thickness,
            cv2.LINE_AA,
        )
    return overlay
