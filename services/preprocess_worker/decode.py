"""Decodes uploaded images safely into plain upright RGB."""

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import ErrorCode, TesseraError

_IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
# Pillow's JPEG opener names the JPEGs many phone cameras write (with extra pictures) "MPO".
_FORMAT_NAMES = {"MPO": "JPEG", "WEBP": "WebP"}
# What Pillow raises on damaged input, beyond its own OSError ("image file is truncated").
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)
# Pillow's convert() clips these to 0..255 instead of scaling them, which turns most of a
# 16-bit grayscale image white.
_WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
def decode_image(
    data: bytes, *, max_pixels: int = 80_000_000, max_aspect: float = 200.0
) -> Image.Image:
    """Decode an uploaded image to upright RGB, checking size limits before decoding pixels.

    EXIF orientation is applied, so phone photos come out the way they are shown. CMYK,
    grayscale (16-bit scaled, not clipped), palette and other modes are converted to RGB;
    any transparency is composited onto white, where the model's reference code (a bare
    ``convert("RGB")``) would expose whatever colour hides under transparent pixels, often
    black. An animated GIF, WebP or PNG gives its first frame, a multi-page TIFF its first page.
    """
    if not data:
        raise TesseraError(
            ErrorCode.decode_failed, "The image file is empty (0 bytes): upload it again.")
    image = _open(data)
    _check_limits(image.size, max_pixels=max_pixels, max_aspect=max_aspect)
    name = _FORMAT_NAMES.get(image.format or "", image.format or "image")
    try:
        image.load()
        return _to_rgb(ImageOps.exif_transpose(image))
    except _DECODE_ERRORS as exc:
        raise TesseraError(
            ErrorCode.decode_failed,
            f"The {name} file is truncated or corrupt: re-export it and upload it again.",
        ) from exc


def _open(data: bytes) -> Image.Image:
    """Read only the header (Image.open is lazy), mapping failures to stable error codes."""
    try:
        return Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise TesseraError(
            ErrorCode.media_limits_exceeded,
            f"The image is too large to decode safely ({exc}): downscale it and upload it again.",
        ) from exc
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        raise TesseraError(
            ErrorCode.decode_failed,
            "The file is not a readable JPEG, PNG, GIF, WebP, BMP or TIFF image: check that it "
            "is complete and not corrupt, re-export it and upload it again.",
        ) from exc


def _check_limits(size: tuple[int, int], *, max_pixels: int, max_aspect: float) -> None:
    """Refuse decompression bombs and slivers before any pixel is decoded."""
    width, height = size
    if width < 1 or height < 1:
        raise TesseraError(
            ErrorCode.decode_failed, f"The image header says it is {width}x{height} pixels, "
            "which is not a valid size: re-export it and upload it again.")
    if width * height > max_pixels:
        raise TesseraError(
            ErrorCode.media_limits_exceeded,
            f"The image is {width}x{height} ({width * height / 1e6:.1f} megapixels); the limit "
            f"is {max_pixels / 1e6:.1f} megapixels: downscale it and upload it again.",
            width=width, height=height, max_pixels=max_pixels,
        )
    aspect = max(width, height) / min(width, height)
    if aspect > max_aspect:
        raise TesseraError(
            ErrorCode.media_limits_exceeded,
            f"The image is {width}x{height}, an aspect ratio of {aspect:.0f}:1; the limit is "
            f"{max_aspect:g}:1: crop it or split it into parts and upload those.",
            width=width, height=height, max_aspect=max_aspect,
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any decoded mode to RGB, compositing transparency onto white."""
    if image.mode in _WIDE_GRAY_MODES:
        image = _wide_gray_to_l(image)
    if not image.has_transparency_data:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _wide_gray_to_l(image: Image.Image) -> Image.Image:
    """Scale 16-bit grayscale to 8 bits (65535 → 255) instead of letting Pillow clip it."""
    values = np.asarray(image).astype(np.int64).clip(0, 65535)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
