"""Conversions between ROS messages and numpy arrays, without cv_bridge.

Images come in as sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8, mono16) or
sensor_msgs/CompressedImage and become (H, W, 3) uint8 RGB arrays; results go out as
sensor_msgs/Image and ovseg_ros/SegmentationResult.
"""

from __future__ import annotations

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest
from std_msgs.msg import ColorRGBA, Header

from ovseg_ros.engine.segmentation import Segmentation
from ovseg_ros.msg import Segment as SegmentMsg
from ovseg_ros.msg import SegmentationResult, Vocabulary

# encoding -> (channels, numpy dtype)
IMAGE_ENCODINGS = {
    "rgb8": (3, np.uint8),
    "bgr8": (3, np.uint8),
    "rgba8": (4, np.uint8),
    "bgra8": (4, np.uint8),
    "mono8": (1, np.uint8),
    "mono16": (1, np.uint16),
}


class ImageConversionError(ValueError):
    """An image message that cannot be turned into an RGB array (the frame is skipped)."""


def image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB.

    mono16 is scaled to 8 bits by its maximum value, as image viewers do.
    Raises ImageConversionError for unsupported encodings and inconsistent sizes.
    """
    if msg.encoding not in IMAGE_ENCODINGS:
        raise ImageConversionError(
            f"unsupported encoding {msg.encoding!r}; supported: {', '.join(IMAGE_ENCODINGS)}"
        )
    channels, dtype = IMAGE_ENCODINGS[msg.encoding]
    height, width = msg.height, msg.width
    row_bytes = width * channels * np.dtype(dtype).itemsize
    if height == 0 or width == 0:
        raise ImageConversionError(f"empty image ({width}x{height})")
    if msg.step < row_bytes or len(msg.data) < msg.step * height:
        raise ImageConversionError(
            f"truncated image: {width}x{height} {msg.encoding} needs step >= {row_bytes} and "
            f"{msg.step * height} bytes, got step {msg.step} and {len(msg.data)} bytes"
        )
    buffer = np.frombuffer(msg.data, dtype=np.uint8, count=msg.step * height)
    rows = buffer.reshape(height, msg.step)[:, :row_bytes]
    pixels = rows.view(dtype)
    if dtype == np.uint16:
        native = "big" if msg.is_bigendian else "little"
        if native != _native_byteorder():
            pixels = pixels.byteswap()
    pixels = pixels.reshape(height, width, channels)
    if msg.encoding == "rgb8":
        return pixels.copy()
    if msg.encoding == "bgr8":
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    if msg.encoding == "rgba8":
        return cv2.cvtColor(pixels, cv2.COLOR_RGBA2RGB)
    if msg.encoding == "bgra8":
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGB)
    if msg.encoding == "mono16":
        peak = max(int(pixels.max()), 1)
        pixels = (pixels.astype(np.float32) * (255.0 / peak)).round().astype(np.uint8)
    return cv2.cvtColor(pixels[:, :, 0], cv2.COLOR_GRAY2RGB)


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg, png, ...) -> (H, W, 3) uint8 RGB."""
    data = np.frombuffer(msg.data, dtype=np.uint8)
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if decoded is None:
        raise ImageConversionError(
            f"could not decode compressed image (format {msg.format!r}, {data.size} bytes)"
        )
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def _native_byteorder() -> str:
    return "little" if np.little_endian else "big"


def array_to_image(array: np.ndarray, encoding: str, header: Header) -> Image:
    """(H, W) or (H, W, C) array -> sensor_msgs/Image with `encoding` and `header`."""
    channels, dtype = IMAGE_ENCODINGS[encoding]
    array = np.ascontiguousarray(array, dtype=dtype)
    height, width = array.shape[:2]
    msg = Image(header=header, height=height, width=width, encoding=encoding)
    msg.is_bigendian = int(not np.little_endian)
    msg.step = width * channels * array.itemsize
    msg.data = array.tobytes()
    return msg


def segmentation_to_msg(segmentation: Segmentation, header: Header) -> SegmentationResult:
    """Segmentation -> SegmentationResult with the source image's header."""
    result = SegmentationResult(header=header)
    result.vocabulary_version = segmentation.vocabulary_version
    result.class_names = list(segmentation.class_names)
    result.labels = array_to_image(segmentation.labels, "mono16", header)
    for segment in segmentation.segments:
        x, y, w, h = segment.box
        result.segments.append(
            SegmentMsg(
                class_id=segment.class_id,
                class_name=segment.class_name,
                score=float(segment.score),
                roi=RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h),
                mask=array_to_image(segment.mask.astype(np.uint8) * 255, "mono8", header),
                area=segment.area,
            )
        )
    return result


def vocabulary_to_msg(
    version: int,
    class_names: list[str],
    colors: np.ndarray,
    templates: list[str],
    header: Header,
) -> Vocabulary:
    """colors: (C, 3) uint8 RGB, one per class name."""
    msg = Vocabulary(header=header, version=version, class_names=list(class_names))
    msg.colors = [
        ColorRGBA(r=float(r) / 255.0, g=float(g) / 255.0, b=float(b) / 255.0, a=1.0)
        for r, g, b in colors.tolist()
    ]
    msg.prompt_templates = list(templates)
    return msg
