"""Media given as an HTTPS URL: fetched from public hosts only, within a size cap and a deadline."""

import hashlib
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO, cast
from urllib.parse import unquote, urlsplit

import httpx

from services.ingest_api.media_source_settings import MediaSourceSettings
from shared.errors import ErrorCode, TesseraError, format_size
from shared.media_types import SNIFF_BYTES, MediaType, sniff_media_type
from shared.object_store import JobKeys, ObjectStore
from shared.schemas import MediaKind, MediaRef
from shared.ssrf import (
    MAX_REDIRECTS,
    IPNetwork,
    Resolver,
    UrlNotAllowed,
    check_public_url,
    public_client,
    system_resolver,
)

# Bodies up to this size stay in memory; larger ones spill to a temporary file.
_SPOOL_BYTES = 8 * 1024 * 1024
# No single connect or read may stall longer than this, so the overall deadline is kept
# within this margin although a blocking read cannot be interrupted.
_MAX_STALL_SECONDS = 10.0
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class FetchedMedia:
    """A fetched body, checked by content, in a temporary file positioned at its start."""

    filename: str
    file: BinaryIO
    size: int
    sha256: str
    media_type: MediaType
    url: str  # where the body came from, after redirects

    def __enter__(self) -> "FetchedMedia":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.file.close()


def fetch_url(url: str, *, max_bytes: int | Callable[[MediaKind], int], timeout_seconds: float,
              allow_http: bool = False, allowed_networks: Sequence[IPNetwork] = (),
              resolver: Resolver = system_resolver) -> FetchedMedia:
    """Download url (public hosts only, every redirect re-checked) into a temporary file.

    `max_bytes` is one cap or a cap per media kind, applied as soon as the first bytes tell
    the kind; the download is aborted past the cap or the deadline.
    """
    check_public_url(url, allow_http=allow_http, resolver=resolver,
                     allowed_networks=allowed_networks)
    deadline = time.monotonic() + timeout_seconds
    # Handed to the caller inside FetchedMedia, which closes it.
    file = cast(BinaryIO, tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES))  # noqa: SIM115
    try:
        with public_client(allow_http=allow_http, resolver=resolver,
                           allowed_networks=allowed_networks,
                           timeout=min(timeout_seconds, _MAX_STALL_SECONDS)) as client:
            fetched = _download(client, url, file, max_bytes, deadline, timeout_seconds)
    except BaseException:
        file.close()
        raise
    file.seek(0)
    return fetched


def media_ref_from_url(*, url: str, job_id: str, index: int, objects: ObjectStore,
                       settings: MediaSourceSettings,
                       max_bytes: Callable[[MediaKind], int]) -> MediaRef:
    """Fetch url and store it as the index-th input of a job."""
    with fetch_url(url, max_bytes=max_bytes, timeout_seconds=settings.URL_FETCH_TIMEOUT_SECONDS,
                   allow_http=settings.URL_FETCH_ALLOW_HTTP,
                   allowed_networks=settings.url_fetch_allowed_networks) as fetched:
        key = JobKeys(job_id).media(index)
        objects.put_file(key, fetched.file, fetched.size, fetched.media_type.mime)
    return MediaRef(index=index, kind=fetched.media_type.kind, key=key, filename=fetched.filename,
                    content_type=fetched.media_type.mime, size_bytes=fetched.size,
                    sha256=fetched.sha256)


def _download(client: httpx.Client, url: str, file: BinaryIO,
              max_bytes: int | Callable[[MediaKind], int], deadline: float,
              timeout_seconds: float) -> FetchedMedia:
    digest = hashlib.sha256()
    size = 0
    media_type: MediaType | None = None
    limit = max_bytes if isinstance(max_bytes, int) else None
    try:
        with client.stream("GET", url, headers={"accept-encoding": "identity"}) as response:
            if not response.is_success:
                raise TesseraError(ErrorCode.url_fetch_failed,
                                   f"Fetching {url[:200]!r} answered HTTP {response.status_code}; "
                                   "check that the URL is public and has not expired.",
                                   upstream_status=response.status_code)
            declared = response.headers.get("content-length", "")
            if limit is not None and declared.isdigit() and int(declared) > limit:
                raise _too_large(url, limit)
            for chunk in response.iter_bytes():
                size += len(chunk)
                digest.update(chunk)
                file.write(chunk)
                if media_type is None and (size >= SNIFF_BYTES):
                    media_type = _sniff(url, file)
                    if not isinstance(max_bytes, int):
                        limit = max_bytes(media_type.kind)
                if limit is not None and size > limit:
                    raise _too_large(url, limit)
                if time.monotonic() > deadline:
                    raise _timed_out(url, timeout_seconds)
            final_url = str(response.url)
    except UrlNotAllowed as refused:
        raise _after_redirect(url, refused) from None
    except httpx.TimeoutException:
        raise _timed_out(url, timeout_seconds) from None
    except httpx.TooManyRedirects:
        raise TesseraError(ErrorCode.url_fetch_failed,
                           f"Fetching {url[:200]!r} took more than {MAX_REDIRECTS} "
                           "redirects.") from None
    except httpx.HTTPError as error:
        raise TesseraError(ErrorCode.url_fetch_failed,
                           f"Fetching {url[:200]!r} failed ({type(error).__name__}: {error}); "
                           "check that the URL is reachable from the internet.") from None
    if media_type is None:
        media_type = _sniff(url, file)
    return FetchedMedia(_filename(final_url), file, size, digest.hexdigest(), media_type,
                        final_url)


def _after_redirect(url: str, refused: UrlNotAllowed) -> TesseraError:
    """The refusal, saying so when it was a redirect's target that was refused."""
    target = refused.request.url
    if target == httpx.URL(url):
        return refused.error
    return TesseraError(refused.error.code,
                        f"Fetching {url[:200]!r} was redirected to {str(target)[:200]!r}. "
                        f"{refused.error.message}", **refused.error.details)


def _sniff(url: str, file: BinaryIO) -> MediaType:
    """The media type of what was written so far, refusing an unsupported one at once."""
    end = file.tell()
    file.seek(0)
    media_type = sniff_media_type(file.read(SNIFF_BYTES))
    file.seek(end)
    if media_type is None:
        raise TesseraError(ErrorCode.unsupported_media,
                           f"{url[:200]!r} is not a supported image, video or PDF (its content "
                           "was checked, not its name or content type).")
    return media_type


def _filename(url: str) -> str:
    """A safe file name from the last path segment of the URL."""
    name = _SAFE_NAME.sub("_", unquote(urlsplit(url).path.rsplit("/", 1)[-1])).strip("._")
    return name[:200] or "download"


def _too_large(url: str, limit: int) -> TesseraError:
    return TesseraError(ErrorCode.media_too_large,
                        f"{url[:200]!r} is larger than the limit of {format_size(limit)}.",
                        limit_bytes=limit)


def _timed_out(url: str, seconds: float) -> TesseraError:
    return TesseraError(ErrorCode.url_fetch_failed,
                        f"Fetching {url[:200]!r} took longer than {seconds:g} s; host the file "
                        "somewhere faster or upload it directly (POST /v1/uploads).")
