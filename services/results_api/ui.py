"""The web page for submitting a job and watching it, served by the results API at /ui."""

import html
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from services.results_api.config import ResultsSettings
from services.results_api.deps import SettingsDep

STATIC_DIR = Path(__file__).parent / "static"

router = APIRouter(include_in_schema=False)


@lru_cache
def page_headers(ingest_url: str) -> dict[str, str]:
    """The page holds an API key: it loads nothing but its own files, may not be framed, and
    talks only to this results API and its deployment's ingest API (INGEST_PUBLIC_URL)."""
    ingest = urlsplit(ingest_url)
    return {
        "Content-Security-Policy": f"default-src 'self'; connect-src 'self' "
                                   f"{ingest.scheme}://{ingest.netloc}; img-src 'self' blob: "
                                   "data:; frame-ancestors 'none'",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


@lru_cache
def _page(ingest_url: str) -> str:
    template = (STATIC_DIR / "index.html").read_text()
    return template.replace("{{INGEST_URL}}", html.escape(ingest_url, quote=True))


def _headers(settings: ResultsSettings) -> dict[str, str]:
    return page_headers(settings.INGEST_PUBLIC_URL)


@router.get("/")
def root() -> RedirectResponse:
    """Send a browser at the bare address to the page."""
    return RedirectResponse("ui")


@router.get("/ui")
def page(settings: SettingsDep) -> HTMLResponse:
    """The page, naming the ingest API it submits to (configured here, never by the URL)."""
    return HTMLResponse(_page(settings.INGEST_PUBLIC_URL), headers=_headers(settings))


@router.get("/ui/app.js")
def script(settings: SettingsDep) -> FileResponse:
    """The page's script."""
    return FileResponse(STATIC_DIR / "app.js", media_type="text/javascript",
                        headers=_headers(settings))


@router.get("/ui/app.css")
def stylesheet(settings: SettingsDep) -> FileResponse:
    """The page's stylesheet."""
    return FileResponse(STATIC_DIR / "app.css", media_type="text/css",
                        headers=_headers(settings))
