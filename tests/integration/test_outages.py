"""When Redis or S3 is lost or hangs, the APIs answer 503 problem+json with Retry-After within
seconds, /healthz says what is down, and service resumes when the dependency is back.

The APIs here are extra processes whose Redis and S3 are reached through TCP proxies this
test freezes or cuts; the shared stack is not disturbed."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from scripts.localstack import LOCAL_TENANT, LocalStack
from scripts.sample_media import sample_jpeg
from shared.job_store import JobStore
from tests.api_process import api_process
from tests.client import auth
from tests.factories import job_record
from tests.tcp_proxy import TcpProxy

# The timeouts the degraded APIs run with; every refusal must come within a few of them.
TIMEOUT_SECONDS = 1.0
FAST_SECONDS = 6.0


class Degraded:
    """An ingest and a results API whose Redis and S3 sit behind proxies."""

    def __init__(self, redis: TcpProxy, s3: TcpProxy, ingest_url: str, results_url: str) -> None:
        self.redis, self.s3 = redis, s3
        self.ingest_url, self.results_url = ingest_url, results_url


@pytest.fixture(scope="module")
def degraded(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Degraded]:
    redis_url = urlsplit(stack.redis_url or "")
    s3_url = urlsplit(stack.s3_endpoint or "")
    logs = tmp_path_factory.mktemp("degraded")
    with TcpProxy(redis_url.hostname or "", redis_url.port or 6379) as redis_proxy, \
            TcpProxy(s3_url.hostname or "", s3_url.port or 80) as s3_proxy:
        env = {"REDIS_URL": f"redis://127.0.0.1:{redis_proxy.port}{redis_url.path}",
               "S3_ENDPOINT": f"http://127.0.0.1:{s3_proxy.port}",
               "REDIS_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
               "S3_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS)}
        with api_process(stack, "services.ingest_api.main:app", logs / "ingest.log",
                         **env) as (ingest_url, _), \
                api_process(stack, "services.results_api.main:app", logs / "results.log",
                            **env) as (results_url, _):
            yield Degraded(redis_proxy, s3_proxy, ingest_url, results_url)


@pytest.fixture
def healed(degraded: Degraded) -> Iterator[Degraded]:
    """The degraded APIs, with their proxies restored after the test."""
    yield degraded
    for proxy in (degraded.redis, degraded.s3):
        proxy.cut()
        proxy.restore()


def _timed(method: str, url: str, **request: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.request(method, url, timeout=60, **request)
    return response, time.monotonic() - started


def _assert_unavailable(response: httpx.Response, seconds: float, service: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "service_unavailable"
    assert response.json()["unavailable"] == service
    assert int(response.headers["retry-after"]) > 0
    assert seconds < FAST_SECONDS


def _submit(stack: LocalStack, degraded: Degraded) -> tuple[httpx.Response, float]:
    return _timed("POST", f"{degraded.ingest_url}/v1/jobs", headers=auth(stack),
                  data={"prompt": "Hi", "max_new_tokens": "4"},
                  files=[("files", ("p.jpg", sample_jpeg(64, 64)))])


def _health(degraded: Degraded) -> dict[str, object]:
    response = httpx.get(f"{degraded.ingest_url}/healthz", timeout=30)
    body: dict[str, object] = response.json()
    body["http_status"] = response.status_code
    return body


@pytest.mark.parametrize("failure", ["cut", "freeze"])
def test_a_lost_or_hung_redis_answers_503_within_seconds(
        stack: LocalStack, healed: Degraded, failure: str) -> None:
    assert _health(healed)["http_status"] == 200
    getattr(healed.redis, failure)()
    listing, seconds = _timed("GET", f"{healed.results_url}/v1/jobs", headers=auth(stack))
    _assert_unavailable(listing, seconds, "redis")
    _assert_unavailable(*_submit(stack, healed), "redis")
    health = _health(healed)
    assert health["http_status"] == 503
    assert health["checks"]["redis"] != "ok" and health["checks"]["s3"] == "ok"  # type: ignore[index]
    healed.redis.thaw() if failure == "freeze" else healed.redis.restore()
    deadline = time.monotonic() + 15
    while _health(healed)["http_status"] != 200:
        assert time.monotonic() < deadline, "the API did not recover when Redis came back"
        time.sleep(0.5)
    assert httpx.get(f"{healed.results_url}/v1/jobs", headers=auth(stack)).status_code == 200


@pytest.mark.parametrize("failure", ["cut", "freeze"])
def test_a_lost_or_hung_s3_answers_503_within_seconds(
        stack: LocalStack, healed: Degraded, failure: str) -> None:
    getattr(healed.s3, failure)()
    _assert_unavailable(*_submit(stack, healed), "s3")
    health = _health(healed)
    assert health["http_status"] == 503
    assert health["checks"]["s3"] != "ok" and health["checks"]["redis"] == "ok"  # type: ignore[index]


def test_an_event_stream_ends_cleanly_when_redis_is_lost(
        stack: LocalStack, healed: Degraded, jobs: JobStore) -> None:
    record = job_record(tenant_id=LOCAL_TENANT)
    jobs.create(record)
    started = time.monotonic()
    lines = []
    with httpx.stream("GET", f"{healed.results_url}/v1/jobs/{record.id}/events",
                      headers=auth(stack), timeout=30) as response:
        for line in response.iter_lines():
            lines.append(line)
            if line.startswith("id: "):
                healed.redis.cut()
    assert lines[0].startswith("id: ")
    assert time.monotonic() - started < FAST_SECONDS + 5


def test_logs_of_degraded_apis_have_no_tracebacks_for_outages(
        degraded: Degraded, tmp_path_factory: pytest.TempPathFactory) -> None:
    del degraded
    logs = Path(tmp_path_factory.getbasetemp())
    for log in logs.glob("degraded*/*.log"):
        assert "Traceback" not in log.read_text(errors="replace"), log
