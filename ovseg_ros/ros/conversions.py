"""Conversions between ROS messages and numpy arrays, without cv_bridge or sensor_msgs_py.

Images come in as sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8, mono16) or
sensor_msgs/CompressedImage and become (H, W, 3) uint8 RGB arrays; depth images (16UC1, mono16,
32FC1) become (H, W) float32 metres and sensor_msgs/CameraInfo becomes Intrinsics; results go
out as sensor_msgs/Image, sensor_msgs/PointCloud2 and ovseg_ros/SegmentationResult.
"""

from __future__ import annotations

import array
from dataclasses import dataclass

import cv2
import numpy as np
from geometry_msgs.msg import Point
from sensor_msgs.msg import (
    CameraInfo,
    CompressedImage,
    Image,
    PointCloud2,
    PointField,
    RegionOfInterest,
)
from std_msgs.msg import ColorRGBA, Header

from ovseg_ros.engine.geometry import Intrinsics, LabelledPoints
from ovseg_ros.engine.segmentation import Segment, Segmentation
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

# depth encoding -> (channels, numpy dtype); the 16-bit ones hold millimetres, 32FC1 metres
DEPTH_ENCODINGS = {
    "16UC1": (1, np.uint16),
    "mono16": (1, np.uint16),
    "32FC1": (1, np.float32),
}


class ImageConversionError(ValueError):
    """An image or depth message that cannot be turned into an array (the frame is skipped)."""


class CameraInfoError(ValueError):
    """A sensor_msgs/CameraInfo without usable intrinsics (uncalibrated, or no image size)."""


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


def _image_pixels(
    msg: Image, encodings: dict[str, tuple[int, type]], kind: str, max_pixels: int
) -> np.ndarray:
    """The pixels of msg as an (H, W, C) array of the encoding's dtype in host byte order, read
    through msg.step (row padding is skipped; data beyond step * height is ignored).

    encodings: the accepted encodings (IMAGE_ENCODINGS or DEPTH_ENCODINGS); kind: "image" or
    "depth image", for the error messages. Raises OversizedImageError above max_pixels (0 = no
    limit) and ImageConversionError for another encoding, a size of 0 or too few bytes.
    """
    check_input_size(msg.width, msg.height, max_pixels)
    if msg.encoding not in encodings:
        raise ImageConversionError(
            f"unsupported {kind} encoding {msg.encoding!r}; supported: {', '.join(encodings)}"
        )
    channels, dtype = encodings[msg.encoding]
    height, width = msg.height, msg.width
    row_bytes = width * channels * np.dtype(dtype).itemsize
    if height == 0 or width == 0:
        raise ImageConversionError(f"empty {kind} ({width}x{height} {msg.encoding})")
    if msg.step < row_bytes or len(msg.data) < msg.step * height:
        raise ImageConversionError(
            f"truncated {kind}: {width}x{height} {msg.encoding} needs step >= {row_bytes} and "
            f"{msg.step * height} bytes, got step {msg.step} and {len(msg.data)} bytes"
        )
    buffer = np.frombuffer(msg.data, dtype=np.uint8, count=msg.step * height)
    rows = buffer.reshape(height, msg.step)[:, :row_bytes]
    stored = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    pixels = rows.view(stored).astype(dtype, copy=False)
    return pixels.reshape(height, width, channels)


def image_to_rgb(msg: Image, max_pixels: int = 0) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB.

    mono16 is scaled to 8 bits by its maximum value, as image viewers do.
    max_pixels: frames with more pixels (msg.width * msg.height, checked before the data is
    read) raise OversizedImageError; 0 = no limit.
    Raises ImageConversionError for unsupported encodings and inconsistent sizes.
    """
    pixels = _image_pixels(msg, IMAGE_ENCODINGS, "image", max_pixels)
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


def depth_to_metres(msg: Image, max_pixels: int = 0) -> np.ndarray:
    """sensor_msgs/Image depth -> (H, W) float32 metres, 0.0 where there is no reading.

    16UC1 and mono16 hold millimetres (0 = no reading); 32FC1 holds metres (NaN, +-inf and
    values <= 0 = no reading). max_pixels and the errors are those of image_to_rgb.
    """
    pixels = _image_pixels(msg, DEPTH_ENCODINGS, "depth image", max_pixels)[:, :, 0]
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) / np.float32(1000.0)
    valid = np.isfinite(pixels) & (pixels > 0)
    return np.where(valid, pixels, np.float32(0.0))


def camera_info_to_intrinsics(msg: CameraInfo) -> Intrinsics:
    """sensor_msgs/CameraInfo -> Intrinsics of its width x height image, from K.

    Raises CameraInfoError for an all-zero K (the camera driver has no calibration) and for what
    Intrinsics.from_k refuses: focal lengths that are not finite and > 0, a principal point that
    is not finite, an image size of 0.
    """
    if not any(msg.k):
        raise CameraInfoError(
            "camera_info has an all-zero K: the camera is not calibrated, so depth cannot be "
            "turned into 3D points"
        )
    try:
        return Intrinsics.from_k(msg.k, msg.width, msg.height)
    except ValueError as exc:
        raise CameraInfoError(f"unusable camera_info: {exc}") from exc


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


def array_to_image(array: np.ndarray, encoding: str, header: Header) -> Image:
    """(H, W) or (H, W, C) array -> sensor_msgs/Image with `encoding` (an image or a depth
    encoding) and `header`."""
    channels, dtype = {**IMAGE_ENCODINGS, **DEPTH_ENCODINGS}[encoding]
    array = np.ascontiguousarray(array, dtype=dtype)
    height, width = array.shape[:2]
    msg = Image(header=header, height=height, width=width, encoding=encoding)
    msg.is_bigendian = int(not np.little_endian)
    msg.step = width * channels * array.itemsize
    msg.data = _byte_array(array)
    return msg


def _byte_array(values: np.ndarray) -> array.array:
    """The bytes of a C-contiguous array as the array.array("B") a uint8[] message field holds,
    copied once; the message setters take an array.array as it is, without the per-element
    checks they run on other sequences when ROS_PYTHON_CHECK_FIELDS=1."""
    data = array.array("B")
    data.frombytes(values.reshape(-1).view(np.uint8))
    return data


# PointCloud2 layout of points_to_cloud: (name, PointField datatype, numpy type) in offset order.
# rgb is declared FLOAT32 but holds the bits of the uint32 0x00RRGGBB, as PCL and RViz2 read it.
CLOUD_FIELDS = (
    ("x", PointField.FLOAT32, np.float32),
    ("y", PointField.FLOAT32, np.float32),
    ("z", PointField.FLOAT32, np.float32),
    ("rgb", PointField.FLOAT32, np.uint32),
    ("label", PointField.UINT32, np.uint32),
    ("score", PointField.FLOAT32, np.float32),
)
CLOUD_DTYPE = np.dtype([(name, numpy_type) for name, _, numpy_type in CLOUD_FIELDS])

# PointField datatype -> numpy type, for reading any cloud
POINT_FIELD_TYPES = {
    PointField.INT8: np.int8,
    PointField.UINT8: np.uint8,
    PointField.INT16: np.int16,
    PointField.UINT16: np.uint16,
    PointField.INT32: np.int32,
    PointField.UINT32: np.uint32,
    PointField.FLOAT32: np.float32,
    PointField.FLOAT64: np.float64,
}


def pack_rgb(colors: np.ndarray) -> np.ndarray:
    """(C, 3) uint8 RGB -> (C,) uint32 0x00RRGGBB, the packing of PointCloud2's rgb field."""
    colors = np.asarray(colors, dtype=np.uint32)
    return (colors[:, 0] << 16) | (colors[:, 1] << 8) | colors[:, 2]


def points_to_cloud(points: LabelledPoints, colors: np.ndarray, header: Header) -> PointCloud2:
    """LabelledPoints -> unordered sensor_msgs/PointCloud2 (height 1, width N) with fields x, y,
    z (float32 metres), rgb (float32 holding 0x00RRGGBB), label (uint32 class id), score
    (float32), 24 bytes a point in host byte order; N = 0 gives an empty, valid cloud.

    colors: (C, 3) uint8 RGB, the display colour of each class id; every label must be < C.
    """
    labels = np.asarray(points.labels, dtype=np.uint32)
    if labels.size and int(labels.max()) >= len(colors):
        raise ValueError(
            f"label {int(labels.max())} has no colour: colors has {len(colors)} rows, one a class"
        )
    # Written into an array.array("B"), the type the message's data field holds: no separate
    # numpy buffer and tobytes() copy (3 to 5 times faster at 0.3 to 0.9 million points).
    data = array.array("B", bytes(CLOUD_DTYPE.itemsize * labels.size))
    cloud = np.frombuffer(data, dtype=CLOUD_DTYPE)
    cloud["x"] = points.xyz[:, 0]
    cloud["y"] = points.xyz[:, 1]
    cloud["z"] = points.xyz[:, 2]
    cloud["rgb"] = pack_rgb(colors)[labels]
    cloud["label"] = labels
    cloud["score"] = points.scores
    msg = PointCloud2(header=header, height=1, width=cloud.size, is_dense=True)
    msg.fields = [
        PointField(name=name, offset=CLOUD_DTYPE.fields[name][1], datatype=datatype, count=1)
        for name, datatype, _ in CLOUD_FIELDS
    ]
    msg.is_bigendian = not np.little_endian
    msg.point_step = CLOUD_DTYPE.itemsize
    msg.row_step = CLOUD_DTYPE.itemsize * cloud.size
    msg.data = data
    return msg


def cloud_to_arrays(msg: PointCloud2) -> dict[str, np.ndarray]:
    """sensor_msgs/PointCloud2 -> {field name: (height * width,) array in host byte order},
    read through the message's own field offsets, point_step, row_step and byte order; the rgb
    and rgba fields come back as uint32 (0x00RRGGBB / 0xAARRGGBB).

    Raises ValueError for fields with count != 1 or an unknown datatype and for too few bytes.
    """
    order = ">" if msg.is_bigendian else "<"
    stored, wanted = [], {}
    for field in msg.fields:
        if field.count != 1 or field.datatype not in POINT_FIELD_TYPES:
            raise ValueError(
                f"point field {field.name!r} has datatype {field.datatype} and count "
                f"{field.count}; only count 1 of the PointField datatypes 1..8 is read"
            )
        numpy_type = np.dtype(POINT_FIELD_TYPES[field.datatype])
        if field.name in ("rgb", "rgba") and numpy_type.itemsize == 4:
            numpy_type = np.dtype(np.uint32)
        stored.append((field.name, numpy_type.newbyteorder(order), field.offset))
        wanted[field.name] = numpy_type
    layout = np.dtype(
        {
            "names": [name for name, _, _ in stored],
            "formats": [numpy_type for _, numpy_type, _ in stored],
            "offsets": [offset for _, _, offset in stored],
            "itemsize": msg.point_step,
        }
    )
    row_bytes = msg.width * msg.point_step
    if msg.row_step < row_bytes or len(msg.data) < msg.row_step * msg.height:
        raise ValueError(
            f"truncated cloud: {msg.width}x{msg.height} points of {msg.point_step} bytes need "
            f"row_step >= {row_bytes} and {msg.row_step * msg.height} bytes, got row_step "
            f"{msg.row_step} and {len(msg.data)} bytes"
        )
    buffer = np.frombuffer(msg.data, dtype=np.uint8, count=msg.row_step * msg.height)
    rows = np.ascontiguousarray(buffer.reshape(msg.height, msg.row_step)[:, :row_bytes])
    cloud = rows.view(layout).reshape(-1)
    return {name: cloud[name].astype(numpy_type) for name, numpy_type in wanted.items()}


def _point(xyz: np.ndarray) -> Point:
    """(3,) metres -> geometry_msgs/Point."""
    x, y, z = (float(v) for v in xyz)
    return Point(x=x, y=y, z=z)


def _segment_to_msg(segment: Segment, header: Header) -> SegmentMsg:
    """One engine Segment -> ovseg_ros/Segment; without geometry, has_3d is false, valid_points
    0 and the centroid and box corners NaN."""
    x, y, w, h = segment.box
    msg = SegmentMsg(
        class_id=segment.class_id,
        class_name=segment.class_name,
        score=float(segment.score),
        roi=RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h),
        mask=array_to_image(segment.mask.astype(np.uint8) * 255, "mono8", header),
        area=segment.area,
    )
    geometry = segment.geometry
    if geometry is None:
        nan = np.full(3, np.nan)
        msg.centroid, msg.box_min, msg.box_max = _point(nan), _point(nan), _point(nan)
    else:
        msg.has_3d = True
        msg.centroid = _point(geometry.centroid)
        msg.box_min = _point(geometry.box_min)
        msg.box_max = _point(geometry.box_max)
        msg.valid_points = geometry.points
    return msg


def segmentation_to_msg(segmentation: Segmentation, header: Header) -> SegmentationResult:
    """Segmentation -> SegmentationResult with the source image's header."""
    result = SegmentationResult(header=header, has_depth=segmentation.has_depth)
    result.vocabulary_version = segmentation.vocabulary_version
    result.rejected_pixels = segmentation.rejected_pixels
    result.class_names = list(segmentation.class_names)
    result.labels = array_to_image(segmentation.labels, "mono16", header)
    result.segments = [_segment_to_msg(segment, header) for segment in segmentation.segments]
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
