"""A hand-made scene for proposal generators: flat objects on a textured background."""

from __future__ import annotations

import cv2
import numpy as np


def checkerboard_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 120 x 160 checkerboard (two muted grays, 10 px cells) with a flat red disc and a flat
    blue rectangle. Returns the image and the two object masks (H, W) bool."""
    ys, xs = np.mgrid[0:120, 0:160]
    checker = ((ys // 10 + xs // 10) % 2).astype(bool)
    image = np.where(checker[..., None], [110, 105, 100], [80, 85, 90]).astype(np.uint8)
    disc = np.zeros((120, 160), np.uint8)
    cv2.circle(disc, (45, 60), 25, 1, -1)
    rectangle = np.zeros((120, 160), bool)
    rectangle[30:90, 100:140] = True
    image[disc.astype(bool)] = (210, 40, 40)
    image[rectangle] = (40, 60, 210)
    return image, disc.astype(bool), rectangle
