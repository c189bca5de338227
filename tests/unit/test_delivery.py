"""Webhook delivery pieces: event ids, payloads and the retry schedule."""

import json

from services.webhook_worker.delivery import backoff_seconds, build_payload, event_id
from shared.schemas import JobStatus
from tests.factories import job_record


def test_event_id_is_stable_per_job_and_event() -> None:
    assert event_id("job_1", "job.succeeded") == event_id("job_1", "job.succeeded")
    assert event_id("job_1", "job.succeeded") != event_id("job_1", "job.failed")


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    delays = [backoff_seconds(n, base=1, cap=30) for n in range(12) for _ in range(20)]
    assert all(0 <= d <= 30 for d in delays)
    assert backoff_seconds(0, base=1, cap=30, retry_after=120) == 120


def test_payload_carries_type_job_and_links() -> None:
    record = job_record(id="job_9", status=JobStatus.succeeded)
    body = json.loads(build_payload(record=record, event_type="job.succeeded", result=None,
                                    result_url="https://s3/x", base_url="http://h"))
    assert body["type"] == "job.succeeded"
    assert body["data"]["id"] == "job_9" and body["data"]["result_url"] == "https://s3/x"
    assert body["data"]["links"]["result"] == "http://h/v1/jobs/job_9/result"
