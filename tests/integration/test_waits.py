"""Waits last what they promise: long-polls, `Prefer: wait` and event streams of quiet jobs run
past redis-py's 5 s default socket timeout, and quiet streams send keep-alives."""

import time
from itertools import pairwise

import httpx

from scripts.localstack import LOCAL_TENANT, LocalStack
from scripts.sample_media import sample_jpeg
from shared.job_store import JobStore
from tests.client import auth
from tests.conftest import IDLE_MODEL, TEST_KEEPALIVE_SECONDS
from tests.factories import job_record

# Longer than redis-py's default socket timeout (5 s), which used to cut every such wait.
WAIT_SECONDS = 7


def _queued_job(jobs: JobStore) -> str:
    record = job_record(tenant_id=LOCAL_TENANT)
    jobs.create(record)
    return record.id


def test_a_long_poll_on_a_queued_job_waits_its_whole_time(stack: LocalStack,
                                                          jobs: JobStore) -> None:
    job_id = _queued_job(jobs)
    started = time.monotonic()
    response = httpx.get(f"{stack.results_url}/v1/jobs/{job_id}", headers=auth(stack),
                         params={"wait": WAIT_SECONDS}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "queued"
    assert WAIT_SECONDS <= time.monotonic() - started < WAIT_SECONDS + 5


def test_prefer_wait_on_a_job_that_stays_queued_answers_202_after_the_wait(
        stack: LocalStack) -> None:
    started = time.monotonic()
    response = httpx.post(f"{stack.ingest_url}/v1/jobs", timeout=30,
                          headers={**auth(stack), "Prefer": f"wait={WAIT_SECONDS}"},
                          data={"prompt": "Hi", "max_new_tokens": "4", "model": IDLE_MODEL},
                          files=[("files", ("p.jpg", sample_jpeg(64, 64)))])
    assert response.status_code == 202, response.text
    assert response.headers["preference-applied"] == f"wait={WAIT_SECONDS}"
    assert not response.json()["terminal"]
    assert time.monotonic() - started >= WAIT_SECONDS
    httpx.post(f"{stack.ingest_url}/v1/jobs/{response.json()['id']}/cancel", headers=auth(stack))


def test_a_quiet_event_stream_stays_open_with_keep_alives(stack: LocalStack,
                                                          jobs: JobStore) -> None:
    job_id = _queued_job(jobs)
    lines: list[tuple[float, str]] = []
    started = time.monotonic()
    with httpx.stream("GET", f"{stack.results_url}/v1/jobs/{job_id}/events",
                      headers=auth(stack), timeout=30) as response:
        for line in response.iter_lines():
            lines.append((time.monotonic() - started, line))
            if time.monotonic() - started > WAIT_SECONDS:
                break
    keep_alives = [at for at, line in lines if line == ": keep-alive"]
    assert lines[0][1].startswith("id: ")
    assert keep_alives[-1] > WAIT_SECONDS - 2 * TEST_KEEPALIVE_SECONDS
    assert len(keep_alives) >= WAIT_SECONDS / TEST_KEEPALIVE_SECONDS / 2
    assert max(b - a for a, b in pairwise(keep_alives)) \
        < 3 * TEST_KEEPALIVE_SECONDS


def test_a_resume_id_that_no_stream_sent_is_refused_with_422(stack: LocalStack,
                                                             jobs: JobStore) -> None:
    job_id = _queued_job(jobs)
    for garbage in ("garbage", "1-2-3", "-1", "1.5"):
        response = httpx.get(f"{stack.results_url}/v1/jobs/{job_id}/events",
                             headers={**auth(stack), "Last-Event-ID": garbage}, timeout=10)
        assert response.status_code == 422, garbage
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "invalid_request"
