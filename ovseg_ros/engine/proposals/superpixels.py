"""Over-segmentation into superpixels: marker-based watershed on the color image (OpenCV).

Seeds sit on a regular grid, each moved to the flattest pixel near it (as SLIC does), so no
seed lands on an edge; the watershed floods from them and its region borders follow color
edges. The watershed's one-pixel region borders go to the adjacent region closest in color. Every
superpixel is 4-connected.
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_SEED_SPACING = 4
"""Smallest distance between two seeds, in pixels."""
NEIGHBOUR_OFFSETS = ((-1, 0), (0, -1), (0, 1), (1, 0))
"""4-neighbours: a border pixel joins a region it shares an edge with, keeping it 4-connected."""


def _seed_positions(gradient: np.ndarray, spacing: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid seeds, each moved to the lowest-gradient pixel within spacing // 4 of its grid
    point. gradient: (H, W) float32. Returns (rows, cols), each (S,) int64."""
    height, width = gradient.shape
    radius = max(1, spacing // 4)
    rows, cols = [], []
    for y in range(spacing // 2, height, spacing):
        for x in range(spacing // 2, width, spacing):
            y0, x0 = max(0, y - radius), max(0, x - radius)
            window = gradient[y0 : y + radius + 1, x0 : x + radius + 1]
            dy, dx = np.unravel_index(int(np.argmin(window)), window.shape)
            rows.append(y0 + dy)
            cols.append(x0 + dx)
    return np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)


def watershed_superpixels(image: np.ndarray, count: int) -> np.ndarray:
    """About `count` superpixels of image (H, W, 3) uint8 RGB.

    Returns labels: (H, W) int64, values 0..S-1, every value used, each superpixel connected.
    Images too small to hold two seeds come back as a single superpixel.
    """
    height, width = image.shape[:2]
    spacing = max(MIN_SEED_SPACING, round(np.sqrt(height * width / max(count, 1))))
    blurred = cv2.GaussianBlur(image, (0, 0), 1.0).astype(np.float32)
    gradient = np.sqrt(
        (cv2.Sobel(blurred, cv2.CV_32F, 1, 0) ** 2 + cv2.Sobel(blurred, cv2.CV_32F, 0, 1) ** 2).sum(
            axis=2
        )
    )
    rows, cols = _seed_positions(gradient, spacing)
    markers = np.zeros((height, width), dtype=np.int32)
    markers[rows, cols] = np.arange(1, len(rows) + 1, dtype=np.int32)
    if len(rows) >= 2:
        cv2.watershed(np.ascontiguousarray(image[..., ::-1]), markers)
    labels = _assign_borders(image, np.maximum(markers, 0))
    _, compact = np.unique(labels, return_inverse=True)
    return compact.reshape(height, width).astype(np.int64)


def _assign_borders(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Gives every unlabeled pixel (0: the watershed's region borders and the image frame) the
    label of the 4-neighbouring region whose mean color is closest to the pixel's color,
    repeating until no pixel is left. labels: (H, W) int32, >= 1 where labeled.
    Returns (H, W) int32 labels >= 1, or all zeros if nothing was labeled."""
    if labels.max() == 0:
        return labels
    height, width = labels.shape
    colors = image.reshape(-1, 3).astype(np.float32)
    while True:
        rows, cols = np.nonzero(labels == 0)
        if len(rows) == 0:
            return labels
        flat = labels.ravel()
        counts = np.maximum(np.bincount(flat, minlength=flat.max() + 1), 1)
        means = np.stack(
            [np.bincount(flat, colors[:, c], minlength=len(counts)) / counts for c in range(3)],
            axis=1,
        )
        padded = np.pad(labels, 1)
        candidates = np.stack(
            [padded[rows + 1 + dy, cols + 1 + dx] for dy, dx in NEIGHBOUR_OFFSETS], axis=1
        )
        pixel = colors[rows * width + cols]
        distance = ((means[candidates] - pixel[:, None, :]) ** 2).sum(axis=2)
        distance[candidates == 0] = np.inf
        best = candidates[np.arange(len(rows)), distance.argmin(axis=1)]
        labels[rows, cols] = best  # stays 0 where no neighbour is labeled yet
