"""Conversions between ROS messages and numpy arrays, without cv_bridge.

Images come in as sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8, mono16) or
sensor_msgs/CompressedImage and become (H, W, 3) uint8 RGB arrays; results go out as
sensor_msgs/Image and ovseg_ros/SegmentationResult.
"""

from __future__ import annotations

from dataclasses import dataclass

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


class OversizedImageError(ImageConversionError):
    """A frame with more pixels than the node accepts (the frame is dropped undecoded)."""


def check_input_size(width: int, height: int, max_pixels: int) -> None:
    """Raises OversizedImageError when width * height exceeds max_pixels (0 = no limit), with
    the size and the limit, e.g. "frame 20000x20000 (400.0 MP) exceeds max_input_pixels=16777216
    (16.8 MP); dropped"."""
    if max_pixels > 0 and width * height > max_pixels:
        raise OversizedImageError(
            f"frame {width}x{height} ({width * height / 1e6:.1f} MP) exceeds "
            f"max_input_pixels={max_pixels} ({max_pixels / 1e6:.1f} MP); dropped"
        )


def image_to_rgb(msg: Image, max_pixels: int = 0) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB.

    mono16 is scaled to 8 bits by its maximum value, as image viewers do.
    max_pixels: frames with more pixels (msg.width * msg.height, checked before the data is
    read) raise OversizedImageError; 0 = no limit.
    Raises ImageConversionError for unsupported encodings and inconsistent sizes.
    """
    check_input_size(msg.width, msg.height, max_pixels)
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


@dataclass(frozen=True)
class EncodedImageSize:
    """What an encoded image's header says: format ("png" or "jpeg"), width and height in
    pixels (>= 1)."""

    format: str
    width: int
    height: int


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
"""JPEG start-of-frame markers SOF0..SOF15, which carry the image size; 0xC4 (DHT), 0xC8 (JPG)
and 0xCC (DAC) share the range but are tables."""
JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
"""JPEG markers without a length field (TEM, RST0..RST7)."""


def encoded_image_size(data: bytes | bytearray | memoryview) -> EncodedImageSize | None:
    """Format and size of a PNG (the IHDR chunk) or JPEG (the first start-of-frame segment)
    image from its header bytes, without decoding it; None for other formats, truncated or
    malformed headers, and sizes of 0 (a JPEG whose height comes later, in a DNL segment)."""
    view = memoryview(data).cast("B")
    if bytes(view[:8]) == PNG_SIGNATURE:
        if len(view) < 24 or bytes(view[12:16]) != b"IHDR":
            return None
        width, height = int.from_bytes(view[16:20], "big"), int.from_bytes(view[20:24], "big")
        return EncodedImageSize("png", width, height) if width and height else None
    if bytes(view[:2]) != b"\xff\xd8":
        return None
    position = 2
    while position + 1 < len(view):
        if view[position] != 0xFF:
            return None
        marker = view[position + 1]
        position += 2
        if marker == 0xFF:  # a fill byte before the marker
            position -= 1
        elif marker in JPEG_STANDALONE_MARKERS:
            continue
        elif marker in (0xD8, 0xD9, 0xDA) or position + 2 > len(view):
            return None  # SOI again, EOI or the scan before any frame header, or truncated
        elif marker in JPEG_FRAME_MARKERS:
            if position + 7 > len(view):
                return None
            height = int.from_bytes(view[position + 3 : position + 5], "big")
            width = int.from_bytes(view[position + 5 : position + 7], "big")
            return EncodedImageSize("jpeg", width, height) if width and height else None
        else:
            length = int.from_bytes(view[position : position + 2], "big")
            if length < 2:
                return None
            position += length
    return None


def declared_format(format_field: str) -> str:
    """The encoding a CompressedImage.format names, lower case: "jpeg", "png", ... as written
    by hand or by image_transport ("rgb8; jpeg compressed bgr8" -> "jpeg"); "jpg" -> "jpeg";
    "" when the field is empty."""
    name = format_field.split(";")[-1].split()
    declared = name[0].lower() if name else ""
    return "jpeg" if declared == "jpg" else declared


def format_mismatch(msg: CompressedImage) -> str | None:
    """A sentence saying that msg.format names another encoding than the bytes' header, for
    the caller to log (once: compressed_to_rgb decodes by the bytes either way); None when they
    agree, when msg.format is empty or when the header is not one encoded_image_size reads."""
    found = encoded_image_size(msg.data)
    declared = declared_format(msg.format)
    if found is None or declared in ("", found.format):
        return None
    return (
        f"compressed frames say format {msg.format!r} but hold {found.format.upper()} data; "
        "decoding them as the bytes say"
    )


def compressed_to_rgb(msg: CompressedImage, max_pixels: int = 0) -> np.ndarray:
    """sensor_msgs/CompressedImage -> (H, W, 3) uint8 RGB, decoded by what its bytes are (see
    format_mismatch for msg.format disagreeing with them).

    max_pixels: 0 = no limit (any format OpenCV decodes); otherwise the size is read from the
    PNG or JPEG header before decoding (encoded_image_size), frames with more pixels raise
    OversizedImageError, and other formats, whose size is not read, ImageConversionError.
    Raises ImageConversionError for data that does not decode.
    """
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if max_pixels > 0:
        size = encoded_image_size(data)
        if size is None:
            raise ImageConversionError(
                f"compressed frame (format {msg.format!r}, {data.size} bytes) is neither PNG nor "
                "JPEG with a readable header; with max_input_pixels set only those are decoded"
            )
        check_input_size(size.width, size.height, max_pixels)
    try:
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error as exc:  # e.g. more than OpenCV's own limit, OPENCV_IO_MAX_IMAGE_PIXELS
        raise ImageConversionError(
            f"could not decode compressed image (format {msg.format!r}, {data.size} bytes): "
            f"{str(exc).strip().splitlines()[-1]}"
        ) from exc
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
