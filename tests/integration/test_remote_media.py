"""Media by URL: fetched from a local server only under a test-only network allowance, with every
redirect re-checked, a size cap and a deadline; stored as a job input in the real S3 server."""

import hashlib
import ipaddress
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scripts.sample_media import sample_jpeg
from services.ingest_api.media_source_settings import MediaSourceSettings
from services.ingest_api.remote_media import fetch_url, media_ref_from_url
from shared.errors import ErrorCode, TesseraError
from shared.object_store import JobKeys, ObjectStore
from shared.schemas import MediaKind
from shared.ssrf import IPNetwork

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
JPEG = sample_jpeg(320, 240)
MIB = 1024 * 1024


class _Media(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        routes: dict[str, Callable[[], None]] = {
            "/photo.jpg": lambda: self._send(JPEG),
            "/hop": lambda: self._redirect("/photo.jpg"),
            "/loop": lambda: self._redirect("/loop"),
            "/to-private": lambda: self._redirect("http://10.255.255.1/photo.jpg"),
            "/to-metadata": lambda: self._redirect("http://169.254.169.254/latest/meta-data/"),
            "/to-decimal-loopback": lambda: self._redirect("http://2130706433/photo.jpg"),
            "/big.jpg": lambda: self._send(JPEG + b"\0" * (2 * MIB)),
            "/big-chunked.jpg": self._chunked_big,
            "/slow.jpg": self._slow,
            "/page.html": lambda: self._send(b"<!doctype html><html></html>"),
        }
        routes.get(self.path, lambda: self.send_error(404))()

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _chunked_big(self) -> None:
        # No Content-Length: only counting the streamed bytes can stop this one.
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(JPEG)
        for _ in range(64):
            self.wfile.write(b"\0" * 65536)

    def _slow(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(JPEG)))
        self.end_headers()
        for offset in range(0, len(JPEG), 16):
            self.wfile.write(JPEG[offset:offset + 16])
            self.wfile.flush()
            time.sleep(0.2)

    def log_message(self, *_: object) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, *_: object) -> None:
        pass  # the client hanging up on an oversized or slow body is the point of those tests


@pytest.fixture(scope="module")
def media_server() -> Iterator[str]:
    server = _QuietServer(("127.0.0.1", 0), _Media)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _fetch(url: str, *, max_bytes: int | Callable[[MediaKind], int] = MIB,
           timeout_seconds: float = 5, allow_http: bool = True,
           allowed_networks: Sequence[IPNetwork] = LOOPBACK) -> TesseraError:
    with pytest.raises(TesseraError) as refused:
        fetch_url(url, max_bytes=max_bytes, timeout_seconds=timeout_seconds,
                  allow_http=allow_http, allowed_networks=allowed_networks)
    return refused.value


def test_fetch_url_streams_hashes_and_sniffs_the_body(media_server: str) -> None:
    with fetch_url(f"{media_server}/hop", max_bytes=MIB, timeout_seconds=5, allow_http=True,
                   allowed_networks=LOOPBACK) as fetched:
        assert fetched.file.read() == JPEG
        assert (fetched.size, fetched.sha256) == (len(JPEG), hashlib.sha256(JPEG).hexdigest())
        assert fetched.media_type.mime == "image/jpeg"
        assert (fetched.filename, fetched.url) == ("photo.jpg", f"{media_server}/photo.jpg")


def test_fetch_url_refuses_a_local_server_without_the_test_allowance(media_server: str) -> None:
    refused = ErrorCode.url_not_allowed
    assert _fetch(f"{media_server}/photo.jpg", allowed_networks=()).code == refused
    assert _fetch(f"{media_server}/photo.jpg", allow_http=False).code == refused


def test_fetch_url_reports_a_dns_failure_as_a_retryable_fetch_failure(media_server: str) -> None:
    # The first lookup (the pre-check) answers; the one when connecting fails.
    answers = iter([["127.0.0.1"]])

    def flaky(host: str) -> list[str]:
        for answer in answers:
            return answer
        raise OSError("Temporary failure in name resolution")

    url = media_server.replace("127.0.0.1", "media.example.com") + "/photo.jpg"
    with pytest.raises(TesseraError) as failed:
        fetch_url(url, max_bytes=MIB, timeout_seconds=5, allow_http=True,
                  allowed_networks=LOOPBACK, resolver=flaky)
    assert failed.value.code == ErrorCode.url_fetch_failed and failed.value.retryable
    assert "could not be resolved" in failed.value.message


@pytest.mark.parametrize("path", ["/to-private", "/to-metadata", "/to-decimal-loopback"])
def test_fetch_url_refuses_redirects_to_non_public_addresses(media_server: str, path: str) -> None:
    error = _fetch(media_server + path)
    assert error.code == ErrorCode.url_not_allowed, error.message
    assert f"{media_server + path!r} was redirected to 'http://" in error.message


def test_a_refused_first_url_does_not_speak_of_a_redirect(media_server: str) -> None:
    error = _fetch("http://10.255.255.1/photo.jpg")
    assert error.code == ErrorCode.url_not_allowed and "redirect" not in error.message


def test_fetch_url_stops_after_five_redirects(media_server: str) -> None:
    error = _fetch(f"{media_server}/loop")
    assert error.code == ErrorCode.url_fetch_failed and "redirects" in error.message


@pytest.mark.parametrize("path", ["/big.jpg", "/big-chunked.jpg"])
def test_fetch_url_aborts_beyond_the_size_cap(media_server: str, path: str) -> None:
    assert _fetch(media_server + path).code == ErrorCode.media_too_large


def test_fetch_url_applies_the_limit_of_the_sniffed_kind(media_server: str) -> None:
    limits: dict[MediaKind, int] = {"image": 1000, "video": MIB, "pdf": MIB}
    error = _fetch(f"{media_server}/photo.jpg", max_bytes=limits.__getitem__)
    assert error.code == ErrorCode.media_too_large


def test_fetch_url_gives_up_on_a_slow_server_at_the_deadline(media_server: str) -> None:
    started = time.monotonic()
    error = _fetch(f"{media_server}/slow.jpg", timeout_seconds=1)
    assert error.code == ErrorCode.url_fetch_failed and "longer than 1 s" in error.message
    assert time.monotonic() - started < 3


def test_fetch_url_refuses_what_is_not_media_and_failed_answers(media_server: str) -> None:
    assert _fetch(f"{media_server}/page.html").code == ErrorCode.unsupported_media
    error = _fetch(f"{media_server}/missing.jpg")
    assert error.code == ErrorCode.url_fetch_failed and "404" in error.message


def test_media_ref_from_url_stores_the_input_of_a_job(media_server: str,
                                                      objects: ObjectStore) -> None:
    settings = MediaSourceSettings(URL_FETCH_ALLOW_HTTP=True,
                                   URL_FETCH_ALLOWED_NETWORKS="127.0.0.0/8")
    ref = media_ref_from_url(url=f"{media_server}/photo.jpg", job_id="job_url", index=2,
                             objects=objects, settings=settings, max_bytes=lambda _: MIB)
    assert ref.key == JobKeys("job_url").media(2)
    assert (ref.kind, ref.content_type, ref.filename) == ("image", "image/jpeg", "photo.jpg")
    assert objects.get_bytes(ref.key) == JPEG
    assert ref.sha256 == hashlib.sha256(JPEG).hexdigest()
