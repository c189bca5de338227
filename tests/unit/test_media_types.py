"""Uploads are recognised by their bytes."""

import pytest

from scripts.sample_media import encode_image, sample_image, sample_mp4, sample_pdf
from shared.media_types import sniff_media_type


@pytest.mark.parametrize(("fmt", "mime"), [
    ("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"), ("WEBP", "image/webp"),
    ("BMP", "image/bmp"), ("TIFF", "image/tiff"),
])
def test_images_are_recognised_by_content(fmt: str, mime: str) -> None:
    data = encode_image(sample_image(64, 48), fmt)
    assert sniff_media_type(data[:16]) == ("image", mime)


def test_video_and_pdf_are_recognised() -> None:
    assert sniff_media_type(sample_mp4(seconds=0.5)[:16]) == ("video", "video/mp4")
    assert sniff_media_type(sample_pdf(1)[:16]) == ("pdf", "application/pdf")
    assert sniff_media_type(b"\x1a\x45\xdf\xa3" + bytes(12)) == ("video", "video/webm")


@pytest.mark.parametrize("head", [b"", b"hello world", b"PK\x03\x04zipfile", bytes(16)])
def test_unknown_content_is_not_guessed(head: bytes) -> None:
    assert sniff_media_type(head) is None


@pytest.mark.parametrize(("head", "kind"), [
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "image"),
    (b"GIF89a\x01\x00", "image"),
    (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image"),
    (b"BM\x36\x00\x00\x00", "image"),
    (b"II*\x00\x08\x00\x00\x00", "image"),
    (b"MM\x00*\x00\x00\x00\x08", "image"),
    (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", "video"),
    (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00", "video"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", "video"),
    (b"%PDF-1.7\n", "pdf"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", None),
    (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", None),
    (b"PK\x03\x04", None),
    (b"", None),
])
def test_magic_bytes_give_the_media_kind(head: bytes, kind: str | None) -> None:
    media_type = sniff_media_type(head)
    assert (media_type.kind if media_type else None) == kind
