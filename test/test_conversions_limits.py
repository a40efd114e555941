"""Input size limits and compressed-frame headers: sizes read without decoding, oversized frames
refused before any decoding, `format` fields that disagree with the bytes."""

from __future__ import annotations

import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from ovseg_ros.ros.conversions import (
    EncodedImageSize,
    ImageConversionError,
    OversizedImageError,
    check_input_size,
    compressed_to_rgb,
    declared_format,
    encoded_image_size,
    format_mismatch,
    image_to_rgb,
)

LIMIT = 4096 * 4096


def _encode(extension: str, height: int, width: int, *params: int, channels: int = 3) -> bytes:
    rng = np.random.default_rng(height * width)
    shape = (height, width, channels) if channels > 1 else (height, width)
    ok, data = cv2.imencode(extension, rng.integers(0, 256, shape, dtype=np.uint8), list(params))
    assert ok
    return data.tobytes()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def _black_png(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG of zeros, compressed row by row: a few bytes per row."""
    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def _compressed(data: bytes, format: str) -> CompressedImage:
    return CompressedImage(format=format, data=data)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (17, 33), (480, 640), (1080, 1920)])
def test_png_and_jpeg_sizes_are_read_from_the_header(height, width):
    assert encoded_image_size(_encode(".png", height, width)) == EncodedImageSize(
        "png", width, height
    )
    assert encoded_image_size(_encode(".jpg", height, width)) == EncodedImageSize(
        "jpeg", width, height
    )
    gray = _encode(".png", height, width, channels=1)
    assert encoded_image_size(gray) == EncodedImageSize("png", width, height)


def test_progressive_jpeg_and_jpeg_with_exif_and_fill_bytes_are_read():
    progressive = _encode(".jpg", 70, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
    assert b"\xff\xc2" in progressive
    assert encoded_image_size(progressive) == EncodedImageSize("jpeg", 90, 70)
    plain = _encode(".jpg", 70, 90)
    exif = b"Exif\x00\x00" + bytes(3000)
    app1 = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    # An APP1 (EXIF) segment after the start of image, and fill bytes before the next marker.
    tagged = plain[:2] + app1 + b"\xff\xff\xff" + plain[2:]
    assert encoded_image_size(tagged) == EncodedImageSize("jpeg", 90, 70)
    np.testing.assert_array_equal(
        compressed_to_rgb(_compressed(tagged, "jpeg"), LIMIT),
        compressed_to_rgb(_compressed(plain, "jpeg")),
    )


def test_truncated_garbage_and_other_formats_have_no_size():
    png, jpeg = _encode(".png", 30, 40), _encode(".jpg", 30, 40)
    sof = jpeg.index(b"\xff\xc0")
    for cut in (0, 1, 7, 8, 16, 23):
        assert encoded_image_size(png[:cut]) is None
    for cut in (0, 1, 2, 3, 20, sof, sof + 6):
        assert encoded_image_size(jpeg[:cut]) is None
    assert encoded_image_size(b"not an image at all") is None
    assert encoded_image_size(b"\xff\xd8\xff\xd9") is None  # ends before any frame
    assert encoded_image_size(b"\xff\xd8\xff\xe0\x00\x01") is None  # length below 2
    assert encoded_image_size(_encode(".bmp", 30, 40)) is None
    # Width or height 0 (a JPEG whose height comes in a later DNL segment).
    no_height = jpeg[: sof + 5] + b"\x00\x00" + jpeg[sof + 7 :]
    assert encoded_image_size(no_height) is None


def test_a_small_file_of_a_huge_image_is_refused_before_decoding():
    bomb = _black_png(8000, 8000)  # 64 MP, 192 MB once decoded to RGB
    assert len(bomb) < 200_000
    started = time.perf_counter()
    with pytest.raises(OversizedImageError) as error:
        compressed_to_rgb(_compressed(bomb, "png"), LIMIT)
    assert time.perf_counter() - started < 0.05  # decoding takes seconds
    assert str(error.value) == (
        "frame 8000x8000 (64.0 MP) exceeds max_input_pixels=16777216 (16.8 MP); dropped"
    )
    # Sizes beyond OpenCV's own limit (2^30 pixels) are an ImageConversionError without a limit.
    header_only = b"\x89PNG\r\n\x1a\n" + _png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    )
    with pytest.raises(ImageConversionError, match="could not decode"):
        compressed_to_rgb(_compressed(header_only, "png"))


def test_a_huge_raw_frame_is_refused_from_its_width_and_height():
    msg = Image(height=20000, width=20000, encoding="rgb8", step=60000)  # no data at all
    with pytest.raises(OversizedImageError, match=r"frame 20000x20000 \(400\.0 MP\) exceeds"):
        image_to_rgb(msg, LIMIT)
    small = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    msg = Image(height=2, width=3, encoding="rgb8", step=9, data=small.tobytes())
    np.testing.assert_array_equal(image_to_rgb(msg, 6), small)
    with pytest.raises(OversizedImageError):
        image_to_rgb(msg, 5)
    check_input_size(100_000, 100_000, 0)  # 0: no limit


def test_with_a_limit_only_png_and_jpeg_are_decoded():
    bmp = _compressed(_encode(".bmp", 30, 40), "bmp")
    assert compressed_to_rgb(bmp).shape == (30, 40, 3)
    with pytest.raises(ImageConversionError, match="neither PNG nor JPEG"):
        compressed_to_rgb(bmp, LIMIT)
    assert compressed_to_rgb(_compressed(_encode(".png", 30, 40), "png"), LIMIT).shape == (
        30,
        40,
        3,
    )
    with pytest.raises(ImageConversionError, match="could not decode"):
        compressed_to_rgb(_compressed(_encode(".jpg", 30, 40)[:100], "jpeg"))


@pytest.mark.parametrize(
    ("field", "declared"),
    [
        ("jpeg", "jpeg"),
        ("JPG", "jpeg"),
        ("png", "png"),
        ("rgb8; jpeg compressed bgr8", "jpeg"),
        ("bgr8; png compressed bgr8", "png"),
        ("", ""),
    ],
)
def test_the_declared_format_is_read_as_image_transport_writes_it(field, declared):
    assert declared_format(field) == declared


def test_a_format_that_disagrees_with_the_bytes_is_decoded_by_the_bytes_and_reported():
    png = _encode(".png", 30, 40)
    expected = compressed_to_rgb(_compressed(png, "png"))
    mislabeled = _compressed(png, "rgb8; jpeg compressed bgr8")
    np.testing.assert_array_equal(compressed_to_rgb(mislabeled, LIMIT), expected)
    assert format_mismatch(mislabeled) == (
        "compressed frames say format 'rgb8; jpeg compressed bgr8' but hold PNG data; "
        "decoding them as the bytes say"
    )
    assert format_mismatch(_compressed(png, "png")) is None
    assert format_mismatch(_compressed(png, "")) is None
    assert format_mismatch(_compressed(_encode(".jpg", 30, 40), "jpg")) is None
    assert format_mismatch(_compressed(b"garbage", "png")) is None  # nothing to compare with
