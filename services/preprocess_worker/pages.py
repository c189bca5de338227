"""PDF page rendering with PDFium: a page range at a chosen DPI, as RGB images."""

import math

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image

from shared.errors import ErrorCode, TesseraError

_POINTS_PER_INCH = 72


def render_pages(
    data: bytes,
    *,
    first_page: int = 1,
    last_page: int | None = None,
    dpi: int = 144,
    max_pages: int = 64,
    max_page_pixels: int = 40_000_000,
) -> list[tuple[int, Image.Image]]:
    """Render pages first_page..last_page (1-based, inclusive) as (page number, RGB image).

    `last_page` defaults to, and is clamped to, the document's last page. A page that would
    exceed `max_page_pixels` at `dpi` is rendered at the largest resolution that fits, since the
    model downsamples it to at most a few tiles anyway.
    """
    if dpi < 1:
        raise ValueError(f"dpi must be positive, got {dpi}")
    pdf = _open(data)
    try:
        first, last = _page_range(len(pdf), first_page, last_page, max_pages)
        # Form fields are drawn only once the form environment exists (filled-in forms).
        pdf.init_forms()
        return [(number, _render(pdf, number, dpi, max_page_pixels))
                for number in range(first, last + 1)]
    except (pdfium.PdfiumError, ValueError) as exc:
        raise TesseraError(
            ErrorCode.decode_failed,
            "A page of the PDF could not be rendered; the file may be damaged: re-export or "
            "print it to a new PDF and upload that.",
        ) from exc
    finally:
        pdf.close()


def _open(data: bytes) -> pdfium.PdfDocument:
    """Open the document, telling password-protected files apart from damaged ones."""
    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if exc.err_code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
            message = ("The PDF is password-protected (encrypted): remove the password, "
                       "for example by printing it to a new PDF, and upload it again.")
        else:
            message = ("The file is not a readable PDF; it may be truncated or damaged: "
                       "re-export it and upload it again.")
        raise TesseraError(ErrorCode.decode_failed, message) from exc


def _page_range(
    page_count: int, first_page: int, last_page: int | None, max_pages: int
) -> tuple[int, int]:
    """Resolve the requested 1-based range against the document and the page limit."""
    if first_page < 1 or (last_page is not None and last_page < first_page):
        raise TesseraError(
            ErrorCode.invalid_request,
            f"The page range first_page={first_page}, last_page={last_page} is not valid: "
            "pages count from 1 and last_page must not be before first_page.",
        )
    if first_page > page_count:
        raise TesseraError(
            ErrorCode.invalid_request,
            f"The PDF has {page_count} page(s), so first_page={first_page} is past its end.",
            page_count=page_count,
        )
    last = page_count if last_page is None else min(last_page, page_count)
    count = last - first_page + 1
    if count > max_pages:
        raise TesseraError(
            ErrorCode.media_limits_exceeded,
            f"Pages {first_page}-{last} are {count} pages; at most {max_pages} can be read "
            f"per file: send first_page and last_page to pick up to {max_pages} pages, "
            "and split the rest into further requests.",
            page_count=page_count, max_pages=max_pages,
        )
    return first_page, last


def _render(pdf: pdfium.PdfDocument, number: int, dpi: int, max_pixels: int) -> Image.Image:
    """Render one page (1-based) at `dpi`, or lower if it would exceed `max_pixels`."""
    page = pdf[number - 1]
    try:
        width, height = page.get_size()  # points, with the page's /Rotate applied
        scale = dpi / _POINTS_PER_INCH
        if width * height * scale * scale > max_pixels:
            scale = math.sqrt(max_pixels / (width * height))
        # The default BGR bitmap comes out as an RGB image copied off PDFium's buffer.
        image: Image.Image = page.render(scale=scale).to_pil()
        return image
    finally:
        page.close()
