"""Decodes uploaded images safely into plain upright RGB."""

import io
import struct
import zlib

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from shared.errors import ErrorCode, TesseraError

_IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
# Pillow's JPEG opener names the JPEGs many phone cameras write (with extra pictures) "MPO".
_FORMAT_NAMES = {"MPO": "JPEG", "WEBP": "WebP"}
# What Pillow raises on damaged input, beyond its own OSError ("image file is truncated").
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)
# Pillow's convert() clips these to 0..255 instead of scaling them, which turns most of a
# 16-bit grayscale image white.
_WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
# EXIF orientations that turn the picture a quarter (the stored width is the shown height).
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
# open_image checks our own pixel limit on the header before any pixel is decoded. Pillow's
# bomb check would refuse first, above its own threshold (about 179 MP), with a message
# quoting that threshold instead of our limit and without the image's size.
Image.MAX_IMAGE_PIXELS = None


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
    return load_rgb(open_image(data, max_pixels=max_pixels, max_aspect=max_aspect))


def open_image(
    data: bytes, *, max_pixels: int = 80_000_000, max_aspect: float = 200.0
) -> Image.Image:
    """Read an uploaded image's header and check its size limits; no pixel is decoded yet."""
    if not data:
        raise TesseraError(
            ErrorCode.decode_failed, "The image file is empty (0 bytes): upload it again.")
    image = _open(data)
    _check_limits(image.size, max_pixels=max_pixels, max_aspect=max_aspect)
    return image


def upright_size(image: Image.Image) -> tuple[int, int]:
    """The (width, height) an opened image has once its EXIF orientation is applied."""
    width, height = image.size
    return (height, width) if _orientation(image) in _QUARTER_TURNS else (width, height)


def reduce_while_decoding(image: Image.Image, size: tuple[int, int]) -> None:
    """Let an opened JPEG decode at 1/2, 1/4 or 1/8 scale, never below `size` (upright).

    libjpeg's DCT scaling skips most of the inverse transform and upsampling work, so a photo
    bound for a much smaller canvas decodes several times faster. Other formats are untouched.
    """
    if image.format not in _JPEG_FORMATS:
        return
    width, height = size
    if _orientation(image) in _QUARTER_TURNS:
        width, height = height, width
    # Pillow picks the largest scale that keeps both axes at least the requested size.
    image.draft("RGB", (max(width, 1), max(height, 1)))


def load_rgb(image: Image.Image) -> Image.Image:
    """Decode an opened image to upright RGB (see decode_image), mapping damage to a code."""
    name = _FORMAT_NAMES.get(image.format or "", image.format or "image")
    # A process-wide Pillow switch that some libraries turn on at import (LMDeploy's image
    # loader does): with it, a truncated upload decodes silently with grey filling the gap.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        image.load()
        # In place: without an orientation tag this is free, where a copy is a full-size pass.
        ImageOps.exif_transpose(image, in_place=True)
        return _to_rgb(image)
    except _DECODE_ERRORS as exc:
        raise TesseraError(
            ErrorCode.decode_failed,
            f"The {name} file is truncated or corrupt: re-export it and upload it again.",
        ) from exc


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1, upright, when absent or unreadable)."""
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except _DECODE_ERRORS:
        return 1


def _open(data: bytes) -> Image.Image:
    """Read only the header (Image.open is lazy), mapping failures to stable error codes."""
    try:
        return Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS)
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
        # convert() copies even an RGB image; skip that full-size pass.
        return image if image.mode == "RGB" else image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _wide_gray_to_l(image: Image.Image) -> Image.Image:
    """Scale 16-bit grayscale to 8 bits (65535 → 255) instead of letting Pillow clip it."""
    values = np.asarray(image).astype(np.int64).clip(0, 65535)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
