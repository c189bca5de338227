"""An Idempotency-Key whose first request died is usable again within seconds; one whose
first request is still running stays held however long it runs."""

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from scripts.localstack import LocalStack
from scripts.sample_media import sample_jpeg
from services.ingest_api.idempotency import CLAIM_SECONDS
from shared.job_store import JobStore
from tests.api_process import api_process
from tests.client import auth

JPEG = sample_jpeg(64, 64)
# How long the slow media URL takes to send its body (a byte every few tenths of a second,
# so no single read stalls long enough to time out).
SLOW_SECONDS = CLAIM_SECONDS + 4


class _SlowMedia(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(JPEG)))
        self.end_headers()
        step = max(1, len(JPEG) // 40)
        for offset in range(0, len(JPEG), step):
            self.wfile.write(JPEG[offset:offset + step])
            self.wfile.flush()
            time.sleep(SLOW_SECONDS / 40)

    def log_message(self, *_: object) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, *_: object) -> None:
        pass  # a killed client hangs up mid-body


@pytest.fixture(scope="module")
def slow_url() -> Iterator[str]:
    server = _QuietServer(("127.0.0.1", 0), _SlowMedia)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/slow.jpg"
    server.shutdown()
    server.server_close()


def _post(base_url: str, stack: LocalStack, key: str, url: str) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/jobs", timeout=60,
                      headers={**auth(stack), "Idempotency-Key": key},
                      data={"prompt": "Hi", "max_new_tokens": "4", "media_urls": url})


def _post_until_killed(base_url: str, stack: LocalStack, key: str, url: str) -> None:
    with suppress(httpx.HTTPError):  # the server is killed mid-request
        _post(base_url, stack, key, url)


def _wait_for_claim(jobs: JobStore) -> None:
    deadline = time.monotonic() + 20
    while not jobs.redis.keys(f"{jobs.prefix}:idem:*"):
        assert time.monotonic() < deadline, "the first request never claimed its key"
        time.sleep(0.05)


def test_a_key_whose_request_was_killed_is_free_again_within_seconds(
        stack: LocalStack, jobs: JobStore, slow_url: str, tmp_path: Path) -> None:
    key = f"killed-{time.monotonic_ns()}"
    for stale in jobs.redis.keys(f"{jobs.prefix}:idem:*"):
        jobs.redis.delete(stale)
    with api_process(stack, "services.ingest_api.main:app",
                     tmp_path / "doomed-ingest.log") as (doomed_url, process):
        threading.Thread(target=_post_until_killed, args=(doomed_url, stack, key, slow_url),
                         daemon=True).start()
        _wait_for_claim(jobs)
        os.killpg(process.pid, signal.SIGKILL)
        killed_at = time.monotonic()
    held = _post(stack.ingest_url, stack, key, slow_url)
    assert held.status_code == 409 and held.json()["code"] == "idempotency_key_in_progress"
    assert 1 <= int(held.headers["retry-after"]) <= CLAIM_SECONDS
    time.sleep(max(0.0, killed_at + CLAIM_SECONDS + 0.5 - time.monotonic()))
    retried = _post(stack.ingest_url, stack, key, slow_url)
    assert retried.status_code == 202, retried.text


def test_a_running_first_request_keeps_its_key_past_one_claim(
        stack: LocalStack, jobs: JobStore, slow_url: str) -> None:
    key = f"running-{time.monotonic_ns()}"
    for stale in jobs.redis.keys(f"{jobs.prefix}:idem:*"):
        jobs.redis.delete(stale)
    first: list[httpx.Response] = []
    runner = threading.Thread(target=lambda: first.append(
        _post(stack.ingest_url, stack, key, slow_url)))
    runner.start()
    _wait_for_claim(jobs)
    time.sleep(CLAIM_SECONDS + 1)
    assert runner.is_alive(), "the slow URL must outlast one claim for this test to mean much"
    during = _post(stack.ingest_url, stack, key, slow_url)
    assert during.status_code == 409, during.text
    runner.join()
    assert first[0].status_code == 202, first[0].text
    replay = _post(stack.ingest_url, stack, key, slow_url)
    assert replay.json()["id"] == first[0].json()["id"]
    assert replay.headers["idempotent-replayed"] == "true"
