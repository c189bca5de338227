"""The web page for submitting a job and watching it, served by the results API at /ui."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

STATIC_DIR = Path(__file__).parent / "static"
# The page holds an API key: it loads nothing but its own files, may not be framed, and talks
# only to HTTP(S) APIs (the ingest API usually has another origin).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' http: https:; "
                               "img-src 'self' blob: data:; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
def root() -> RedirectResponse:
    """Send a browser at the bare address to the page."""
    return RedirectResponse("ui")


@router.get("/ui")
def page() -> FileResponse:
    """The page."""
    return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


@router.get("/ui/app.js")
def script() -> FileResponse:
    """The page's script."""
    return FileResponse(STATIC_DIR / "app.js", media_type="text/javascript",
                        headers=PAGE_HEADERS)


@router.get("/ui/app.css")
def stylesheet() -> FileResponse:
    """The page's stylesheet."""
    return FileResponse(STATIC_DIR / "app.css", media_type="text/css", headers=PAGE_HEADERS)
