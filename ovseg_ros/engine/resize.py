"""The processing size: the image size both stages see, from the input's size and one setting.

Two rules, one setting (`processing_size`, text):
- "640" or "long:640": the long side at most 640 pixels; larger images are downscaled, smaller
  ones go through as they are (the robot default: a camera's frame is never enlarged).
- "short:512" or "short:512:2048": the short side scaled to exactly 512 pixels, up or down, and
  the long side then capped at 2048 (the reference's test-time ResizeShortestEdge with
  MIN_SIZE_TEST 512, MAX_SIZE_TEST 2048; sides rounded as detectron2 rounds them).
- "0" or "native": every image as it is.

Downscaling uses cv2.INTER_AREA, enlarging cv2.INTER_LINEAR. The reference resizes with PIL's
bilinear filter, so a resized image matches its size exactly but its pixels only closely.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

EDGES = ("long", "short")
"""Which side of the image ProcessingSize.size sets."""


@dataclass(frozen=True)
class ProcessingSize:
    """edge: "long" (downscale only, so that the long side is at most `size`) or "short" (scale up
    or down so that the short side is `size`, then cap the long side at `max_long`); size: pixels,
    >= 0, 0 = native (edge "long" only); max_long: pixels, 0 = no cap (edge "short" only)."""

    edge: str = "long"
    size: int = 640
    max_long: int = 0

    def __post_init__(self) -> None:
        if self.edge not in EDGES:
            raise ValueError(f"processing size edge must be 'long' or 'short', got {self.edge!r}")
        if self.size < 0:
            raise ValueError(f"processing sizes must be >= 0, got {self.size}")
        if self.max_long < 0:
            raise ValueError(f"the long-side cap must be >= 0, got {self.max_long}")
        if self.edge == "short" and self.size == 0:
            raise ValueError("a short-side processing size must be >= 1 (use '0' for native)")
        if self.edge == "long" and self.max_long:
            raise ValueError("only a short-side processing size takes a long-side cap")
        if self.max_long and self.max_long < self.size:
            raise ValueError(
                f"the long-side cap {self.max_long} is below the short side {self.size}"
            )

    @classmethod
    def parse(cls, text: str | int) -> ProcessingSize:
        """A ProcessingSize from its text: "640", "long:640", "short:512", "short:512:2048", "0"
        or "native" (see the module docstring); an int is a long side. Raises ValueError with
        the accepted forms."""
        spec = str(text).strip().lower()
        if spec == "native":
            return cls("long", 0)
        parts = spec.split(":")
        try:
            if len(parts) == 1:
                return cls("long", int(parts[0]))
            if parts[0] == "long" and len(parts) == 2:
                return cls("long", int(parts[1]))
            if parts[0] == "short" and len(parts) in (2, 3):
                return cls("short", int(parts[1]), int(parts[2]) if len(parts) == 3 else 0)
        except ValueError as error:
            if "invalid literal" not in str(error):
                raise
        raise ValueError(
            f"processing size {text!r} is not one of: N or long:N (long side at most N), "
            "short:N or short:N:M (short side N, long side at most M), 0 or native"
        )

    def __str__(self) -> str:
        if self.edge == "long":
            return str(self.size)
        return f"short:{self.size}" + (f":{self.max_long}" if self.max_long else "")

    def shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) an image of height x width pixels is processed at (each side >= 1)."""
        longest, shortest = max(height, width), min(height, width)
        if self.edge == "long":
            if self.size == 0 or longest <= self.size:
                return height, width
            scale = self.size / longest
            return max(1, round(height * scale)), max(1, round(width * scale))
        scale = self.size / shortest
        if self.max_long and longest * scale > self.max_long:
            scale = self.max_long / longest
        return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))

    def apply(self, image: np.ndarray) -> np.ndarray:
        """image (H, W, C) -> itself when shape(H, W) is (H, W), else resized to it (INTER_AREA
        when shrinking, INTER_LINEAR when enlarging)."""
        height, width = self.shape(*image.shape[:2])
        if (height, width) == image.shape[:2]:
            return image
        shrink = height * width < image.shape[0] * image.shape[1]
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        return cv2.resize(image, (width, height), interpolation=interpolation)
