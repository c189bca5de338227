"""Following and steering jobs over HTTP: listings, waits, idempotency, cancel, retry,
deadlines, retention and backpressure."""

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from scripts.localstack import LOCAL_TENANT, LocalStack
from scripts.sample_media import sample_jpeg
from services.ingest_api.config import IngestSettings
from services.ingest_api.service import check_backpressure
from shared.errors import TesseraError
from shared.job_store import JobStore
from shared.object_store import JobKeys, ObjectStore
from shared.queues import inference_queue
from tests.client import auth, result, submit, wait_terminal
from tests.factories import job_record

PHOTO = [("p.jpg", sample_jpeg(200, 150))]


def _queued_job(jobs: JobStore, **fields: object) -> str:
    """A job of the stack's tenant recorded as queued but never sent to a worker."""
    record = job_record(tenant_id=LOCAL_TENANT, **fields)
    jobs.create(record)
    return record.id


def test_listing_pages_through_the_callers_jobs_newest_first(stack: LocalStack) -> None:
    tag = f"list-{time.monotonic_ns()}"
    created = [submit(stack, PHOTO, metadata=f'{{"run": "{tag}"}}').json()["id"]
               for _ in range(3)]
    pages, cursor = [], None
    while True:
        params: dict[str, str | int] = {"limit": 2, "metadata": f"run={tag}"}
        if cursor:
            params["cursor"] = cursor
        page = httpx.get(f"{stack.results_url}/v1/jobs", headers=auth(stack),
                         params=params).json()
        pages.append([job["id"] for job in page["data"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [job_id for page in pages for job_id in page] == created[::-1]
    assert len(pages[0]) == 2


def test_listing_filters_by_status(stack: LocalStack) -> None:
    job = wait_terminal(stack, submit(stack, PHOTO).json()["id"])
    page = httpx.get(f"{stack.results_url}/v1/jobs", headers=auth(stack),
                     params={"status": "succeeded", "limit": 200}).json()
    assert job["id"] in [item["id"] for item in page["data"]]
    assert {item["status"] for item in page["data"]} == {"succeeded"}


def test_prefer_wait_answers_with_the_finished_job(stack: LocalStack) -> None:
    response = httpx.post(f"{stack.ingest_url}/v1/jobs", timeout=70,
                          headers={**auth(stack), "Prefer": "wait=30"},
                          data={"prompt": "Hi", "max_new_tokens": "4"},
                          files=[("files", PHOTO[0])])
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert response.headers["preference-applied"] == "wait=30"


def test_long_poll_returns_when_the_job_ends(stack: LocalStack) -> None:
    job = submit(stack, PHOTO).json()
    polled = httpx.get(job["links"]["self"], headers=auth(stack), params={"wait": 30},
                       timeout=70).json()
    assert polled["terminal"] and polled["status"] == "succeeded"


def test_idempotency_key_replays_refuses_other_bodies(stack: LocalStack) -> None:
    key = f"idem-{time.monotonic_ns()}"
    headers = {"Idempotency-Key": key}
    first = submit(stack, PHOTO, headers=headers)
    again = submit(stack, PHOTO, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = submit(stack, PHOTO, prompt="Something else", headers=headers)
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"


def test_cancel_of_a_queued_job_is_immediate(stack: LocalStack, jobs: JobStore) -> None:
    job_id = _queued_job(jobs)
    response = httpx.post(f"{stack.ingest_url}/v1/jobs/{job_id}/cancel", headers=auth(stack))
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    assert response.json()["error"]["code"] == "canceled_by_user"
    again = httpx.post(f"{stack.ingest_url}/v1/jobs/{job_id}/cancel", headers=auth(stack))
    assert again.status_code == 409
    assert again.json()["code"] == "job_not_cancelable"


def test_cancel_of_a_running_job_stops_it_at_a_safe_point(
        stack: LocalStack, jobs: JobStore) -> None:
    job_id = submit(stack, PHOTO, max_new_tokens=3000, min_new_tokens=3000).json()["id"]
    deadline = time.monotonic() + 60
    while jobs.get(job_id).status != "inferring":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    response = httpx.post(f"{stack.ingest_url}/v1/jobs/{job_id}/cancel", headers=auth(stack))
    assert response.json()["status"] == "canceling"
    started = time.monotonic()
    job = wait_terminal(stack, job_id)
    assert job["status"] == "canceled"
    assert job["error"]["stage"] == "inference"
    assert time.monotonic() - started < 10
    assert result(stack, job_id).status_code == 409


def test_a_failed_job_can_be_retried_as_a_new_job(stack: LocalStack) -> None:
    failed = wait_terminal(stack, submit(stack, [("b.jpg", sample_jpeg()[:800])]).json()["id"])
    response = httpx.post(f"{stack.ingest_url}/v1/jobs/{failed['id']}/retry",
                          headers=auth(stack))
    assert response.status_code == 202
    retried = wait_terminal(stack, response.json()["id"])
    assert retried["retry_of"] == failed["id"]
    assert retried["status"] == "failed"  # the same broken file fails the same way
    succeeded = wait_terminal(stack, submit(stack, PHOTO).json()["id"])
    refused = httpx.post(f"{stack.ingest_url}/v1/jobs/{succeeded['id']}/retry",
                         headers=auth(stack))
    assert refused.status_code == 409


def test_a_job_not_started_before_its_deadline_expires(stack: LocalStack,
                                                       jobs: JobStore) -> None:
    job_id = _queued_job(jobs, deadline_at=datetime.now(UTC) - timedelta(seconds=1))
    job = wait_terminal(stack, job_id, timeout=30)  # housekeeping runs every second or so
    assert job["status"] == "expired"
    assert job["error"]["code"] == "deadline_exceeded"


def test_a_purged_job_answers_410_and_its_objects_are_gone(
        stack: LocalStack, jobs: JobStore, objects: ObjectStore) -> None:
    job = wait_terminal(stack, submit(stack, PHOTO).json()["id"])
    assert job["result_expires_at"] is not None
    jobs.redis.zadd(f"{jobs.prefix}:retention", {job["id"]: 0})  # as if retention ended
    deadline = time.monotonic() + 30
    while (answer := result(stack, job["id"])).status_code != 410:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.2)
    assert answer.json()["code"] == "result_gone"
    # The record goes first (so no reader sees a job without its objects), then the objects.
    while list(objects.list_keys(JobKeys(job["id"]).prefix)):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    never = httpx.get(f"{stack.results_url}/v1/jobs/job_never", headers=auth(stack))
    assert never.status_code == 404


def test_a_full_queue_is_refused_with_503(jobs: JobStore) -> None:
    model = f"full-{time.monotonic_ns()}"
    jobs.redis.rpush(inference_queue(model), *["x"] * 3)
    try:
        with pytest.raises(TesseraError) as refused:
            check_backpressure(jobs, {model: 1}, IngestSettings(MAX_QUEUED_JOBS=3))
        assert refused.value.code == "queue_full"
        assert refused.value.details["retry_after_seconds"] == 30
    finally:
        jobs.redis.delete(inference_queue(model))


def test_a_running_job_reports_its_progress(stack: LocalStack, jobs: JobStore) -> None:
    job_id = submit(stack, PHOTO, max_new_tokens=3000, min_new_tokens=3000).json()["id"]
    deadline = time.monotonic() + 60
    while (progress := (job := httpx.get(f"{stack.results_url}/v1/jobs/{job_id}",
                                         headers=auth(stack)).json()).get("progress") or {}
           ).get("stage") != "inference" or not progress.get("done"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["progress"]["stage"] == "inference"
    assert 0 < job["progress"]["done"] <= job["progress"]["total"] == 3000
    httpx.post(f"{stack.ingest_url}/v1/jobs/{job_id}/cancel", headers=auth(stack))
    assert wait_terminal(stack, job_id)["status"] == "canceled"
