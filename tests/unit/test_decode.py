"""Image decoding: magic-byte sniffing, modes to RGB, orientation, limits and damaged files."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from services.preprocess_worker.decode import decode_image
from shared.errors import ErrorCode, TesseraError


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """Save an image to bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size in its header but holds next to no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + checksum

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def close_to(pixel: object, expected: tuple[int, ...], tolerance: int = 12) -> bool:
    """Whether a decoded pixel is within a lossy-codec tolerance of the expected colour."""
    assert isinstance(pixel, tuple)
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_decode_image_reads_every_supported_format(fmt: str) -> None:
    data = encode(Image.new("RGB", (24, 16), (200, 40, 40)), fmt)
    image = decode_image(data)
    assert (image.mode, image.size) == ("RGB", (24, 16))
    assert close_to(image.getpixel((12, 8)), (200, 40, 40))


def test_decode_image_applies_exif_orientation() -> None:
    # Stored 40x20, left half red, right half blue; orientation 6 means "turn 90° clockwise".
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image = decode_image(encode(stored, "JPEG", quality=95, exif=exif))
    assert image.size == (20, 40)
    assert close_to(image.getpixel((10, 5)), (255, 0, 0))
    assert close_to(image.getpixel((10, 35)), (0, 0, 255))


def test_decode_image_converts_cmyk_jpeg_to_rgb() -> None:
    image = decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"))
    assert image.mode == "RGB"
    assert close_to(image.getpixel((8, 8)), (255, 0, 0))


def test_decode_image_converts_grayscale_to_rgb() -> None:
    image = decode_image(encode(Image.new("L", (8, 8), 77), "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (77, 77, 77)


def test_decode_image_scales_16_bit_grayscale_instead_of_clipping() -> None:
    levels = np.array([[0, 0x8080, 0xFFFF, 0x1000]], dtype=np.uint16)
    data = encode(Image.fromarray(levels), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    image = decode_image(data)
    assert [image.getpixel((x, 0)) for x in range(4)] == [
        (0, 0, 0), (128, 128, 128), (255, 255, 255), (16, 16, 16)]


def test_decode_image_converts_palette_with_transparency_onto_white() -> None:
    palette_image = Image.new("P", (4, 4), 1)
    palette_image.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette_image.putpixel((0, 0), 0)
    image = decode_image(encode(palette_image, "PNG", transparency=0))
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 1)) == (200, 10, 10)


def test_decode_image_composites_alpha_onto_white() -> None:
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(0, 0, 0, 0), (0, 0, 0, 255), (255, 0, 0, 128)])
    image = decode_image(encode(rgba, "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 0)) == (0, 0, 0)
    assert close_to(image.getpixel((2, 0)), (255, 127, 127), tolerance=1)


def test_decode_image_takes_first_frame_of_animated_gif() -> None:
    frames = [Image.new("RGB", (8, 8), color) for color in [(255, 0, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data).getpixel((4, 4)) == (255, 0, 0)


def test_decode_image_rejects_truncated_jpeg() -> None:
    data = encode(Image.effect_noise((256, 256), 64).convert("RGB"), "JPEG")
    with pytest.raises(TesseraError) as caught:
        decode_image(data[: len(data) // 2])
    assert caught.value.code is ErrorCode.decode_failed
    assert "JPEG file is truncated or corrupt" in caught.value.message


def test_decode_image_rejects_zero_bytes() -> None:
    with pytest.raises(TesseraError) as caught:
        decode_image(b"")
    assert caught.value.code is ErrorCode.decode_failed
    assert "empty" in caught.value.message


def test_decode_image_rejects_garbage() -> None:
    with pytest.raises(TesseraError) as caught:
        decode_image(b"this is not an image at all" * 10)
    assert caught.value.code is ErrorCode.decode_failed


@pytest.mark.parametrize(("width", "height"), [(9_000, 9_000), (100_000, 100_000)])
def test_decode_image_rejects_bomb_from_header_before_decoding(width: int, height: int) -> None:
    # 81 MP trips our limit; 10,000 MP also trips Pillow's own bomb check inside Image.open.
    with pytest.raises(TesseraError) as caught:
        decode_image(png_header(width, height))
    assert caught.value.code is ErrorCode.media_limits_exceeded
    # The image's own size and our limit, not Pillow's bomb threshold (178956970 pixels).
    assert f"{width}x{height}" in caught.value.message
    assert "the limit is 80.0 megapixels" in caught.value.message


def test_decode_image_honours_a_lower_pixel_limit() -> None:
    with pytest.raises(TesseraError) as caught:
        decode_image(encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=9_999)
    assert caught.value.code is ErrorCode.media_limits_exceeded
    assert "megapixels" in caught.value.message


def test_decode_image_rejects_extreme_aspect_ratio() -> None:
    with pytest.raises(TesseraError) as caught:
        decode_image(encode(Image.new("RGB", (2010, 10)), "PNG"))
    assert caught.value.code is ErrorCode.media_limits_exceeded
    assert "aspect ratio" in caught.value.message
    assert decode_image(encode(Image.new("RGB", (1990, 10)), "PNG")).size == (1990, 10)


def test_truncated_jpeg_is_refused_even_when_a_library_allows_truncated_images(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as LMDeploy's import does
    data = encode(Image.effect_noise((256, 256), 64).convert("RGB"), "JPEG")
    with pytest.raises(TesseraError) as caught:
        decode_image(data[: len(data) // 2])
    assert caught.value.code is ErrorCode.decode_failed
