"""PDF rendering: page ranges, resolution, limits, and encrypted or damaged files."""

import pytest
from PIL import Image

from services.preprocess_worker.pages import render_pages
from shared.errors import ErrorCode, TesseraError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def make_pdf(pages: list[tuple[int, int, tuple[int, int, int]]], *, rotate: int = 0,
             encrypted: bool = False) -> bytes:
    """A hand-written PDF whose pages (width and height in points) are each filled with a colour.

    With `encrypted`, the standard security handler is declared with a user password the empty
    password does not match, as in a password-protected file.
    """
    objects = {1: b"<< /Type /Catalog /Pages 2 0 R >>"}
    kids = []
    number = 3
    for width, height, (r, g, b) in pages:
        content = f"{r / 255} {g / 255} {b / 255} rg 0 0 {width} {height} re f".encode()
        objects[number] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] "
                           f"/Rotate {rotate} /Contents {number + 1} 0 R >>").encode()
        objects[number + 1] = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content)
        kids.append(f"{number} 0 R")
        number += 2
    objects[2] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>".encode()
    trailer = b"/Size %d /Root 1 0 R" % (number + encrypted)
    if encrypted:
        objects[number] = (b"<< /Filter /Standard /V 1 /R 2 /O <" + b"11" * 32 + b"> /U <"
                           + b"22" * 32 + b"> /P -4 >>")
        trailer += b" /Encrypt %d 0 R /ID [<%s> <%s>]" % (number, b"33" * 16, b"33" * 16)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for key in sorted(objects):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (key, objects[key])
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(offsets) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< %s >>\nstartxref\n%d\n%%%%EOF\n" % (trailer, xref)
    return bytes(out)


def center(image: Image.Image) -> tuple[int, ...]:
    """The colour at the middle of a rendered page."""
    pixel = image.getpixel((image.width // 2, image.height // 2))
    assert isinstance(pixel, tuple)
    return pixel


def test_render_pages_renders_every_page_at_requested_dpi() -> None:
    pages = render_pages(make_pdf([(72, 72, RED), (144, 72, GREEN), (72, 36, BLUE)]), dpi=144)
    assert [number for number, _ in pages] == [1, 2, 3]
    assert [image.size for _, image in pages] == [(144, 144), (288, 144), (144, 72)]
    assert all(image.mode == "RGB" for _, image in pages)
    assert [center(image) for _, image in pages] == [RED, GREEN, BLUE]


def test_render_pages_renders_only_requested_range() -> None:
    pdf = make_pdf([(72, 72, RED), (72, 72, GREEN), (72, 72, BLUE)])
    pages = render_pages(pdf, first_page=2, last_page=2, dpi=72)
    assert [(number, center(image)) for number, image in pages] == [(2, GREEN)]


def test_render_pages_clamps_last_page_to_document() -> None:
    pages = render_pages(make_pdf([(72, 72, RED), (72, 72, GREEN)]), first_page=2, last_page=99)
    assert [number for number, _ in pages] == [2]


def test_render_pages_applies_page_rotation() -> None:
    [(_, image)] = render_pages(make_pdf([(100, 50, RED)], rotate=90), dpi=72)
    assert image.size == (50, 100)


def test_render_pages_lowers_resolution_of_huge_pages() -> None:
    [(_, image)] = render_pages(make_pdf([(7200, 7200, RED)]), dpi=144, max_page_pixels=1_000_000)
    assert abs(image.width - 1000) <= 1
    assert abs(image.height - 1000) <= 1


def test_render_pages_rejects_too_many_pages_and_says_how_to_pick_a_range() -> None:
    pdf = make_pdf([(72, 72, RED)] * 5)
    with pytest.raises(TesseraError) as caught:
        render_pages(pdf, max_pages=3)
    assert caught.value.code is ErrorCode.media_limits_exceeded
    assert "at most 3" in caught.value.message
    assert "first_page and last_page" in caught.value.message
    assert len(render_pages(pdf, first_page=3, max_pages=3)) == 3


@pytest.mark.parametrize(("first_page", "last_page"), [(3, None), (0, 1), (2, 1)])
def test_render_pages_rejects_page_range_outside_document(
    first_page: int, last_page: int | None
) -> None:
    with pytest.raises(TesseraError) as caught:
        render_pages(make_pdf([(72, 72, RED)] * 2), first_page=first_page, last_page=last_page)
    assert caught.value.code is ErrorCode.invalid_request


def test_render_pages_rejects_password_protected_pdf() -> None:
    with pytest.raises(TesseraError) as caught:
        render_pages(make_pdf([(72, 72, RED)], encrypted=True))
    assert caught.value.code is ErrorCode.decode_failed
    assert "password" in caught.value.message


@pytest.mark.parametrize("data", [b"%PDF-1.4\nnothing else", b"", b"\x00garbage" * 50])
def test_render_pages_rejects_broken_pdf(data: bytes) -> None:
    with pytest.raises(TesseraError) as caught:
        render_pages(data)
    assert caught.value.code is ErrorCode.decode_failed
    assert "not a readable PDF" in caught.value.message


def test_render_pages_rejects_truncated_pdf() -> None:
    pdf = make_pdf([(72, 72, RED)] * 3)
    with pytest.raises(TesseraError) as caught:
        render_pages(pdf[: len(pdf) // 2])
    assert caught.value.code is ErrorCode.decode_failed
