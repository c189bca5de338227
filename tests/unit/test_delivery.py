"""Webhook delivery pieces: payloads, the retry schedule, Retry-After and attempt outcomes."""

import json
from datetime import timedelta

import httpx

from services.webhook_worker.config import WebhookSettings
from services.webhook_worker.delivery import (
    backoff_seconds,
    build_payload,
    outcome_of,
    retry_after,
)
from shared.job_store import utcnow
from shared.schemas import JobStatus
from shared.webhook_events import (
    DeliveryAttempt,
    WebhookEvent,
    retry_delays,
    retry_horizon_seconds,
    wanted,
)
from tests.factories import job_record


def _event(event_type: str = "job.succeeded", **data: object) -> WebhookEvent:
    return WebhookEvent.model_validate({"id": "evt_job_9_3", "job_id": "job_9", "type": event_type,
                                        "sequence": 3, "created_at": utcnow(), "data": data})


def _attempt(status: int | None, number: int = 1) -> DeliveryAttempt:
    return DeliveryAttempt(event_id="e", event_type="job.output", number=number, at=utcnow(),
                           status_code=status, latency_ms=1.0, error=None)


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    for n in range(12):
        ceiling = min(32, 2**n)
        assert ceiling / 2 <= backoff_seconds(n, base=1, cap=32) <= ceiling
    assert backoff_seconds(0, base=1, cap=30, retry_after=120) == 120
    assert backoff_seconds(0, base=1, cap=30, retry_after=7200, retry_after_cap=3600) == 3600


def test_default_schedule_spans_about_a_day_and_fits_the_event_lifetime() -> None:
    horizon = retry_horizon_seconds()
    assert 20 * 3600 < horizon < 40 * 3600
    assert len(retry_delays(max_attempts=12, base=60, cap=8 * 3600, retry_after_cap=0)) == 11
    WebhookSettings()  # the default schedule passes the settings' own check


def test_terminal_payload_carries_type_sequence_job_and_links() -> None:
    record = job_record(id="job_9", status=JobStatus.succeeded)
    body = json.loads(build_payload(event=_event(), record=record, result=None,
                                    result_url="https://s3/x", base_url="http://h"))
    assert body["type"] == "job.succeeded" and body["sequence"] == 3
    assert body["data"]["id"] == "job_9" and body["data"]["result_url"] == "https://s3/x"
    assert body["data"]["links"]["result"] == "http://h/v1/jobs/job_9/result"


def test_output_payload_is_small_and_names_the_job() -> None:
    record = job_record(id="job_9", status=JobStatus.inferring)
    body = json.loads(build_payload(event=_event("job.output", delta="Hel"), record=record,
                                    result=None, result_url=None, base_url="http://h"))
    assert body["data"] == {"id": "job_9", "delta": "Hel"}


def test_filter_admits_asked_events_and_always_the_terminal_one() -> None:
    record = job_record(webhook_url="https://example.com/h", webhook_events=["output"])
    assert wanted(record, "job.output") and wanted(record, "job.failed")
    assert not wanted(record, "job.progress") and not wanted(record, "job.started")
    assert not wanted(job_record(), "job.succeeded")


def test_retry_after_reads_seconds_and_dates_on_429_and_503_only() -> None:
    def response(status: int, value: str) -> httpx.Response:
        return httpx.Response(status, headers={"Retry-After": value})

    assert retry_after(response(429, "3")) == 3.0
    later = (utcnow() + timedelta(seconds=120)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 100 < (retry_after(response(503, later)) or 0) <= 120
    assert retry_after(response(500, "3")) is None
    assert retry_after(response(429, "soon")) is None


def test_outcomes_delivered_disabled_retrying_then_failed() -> None:
    assert outcome_of(_attempt(204), max_attempts=3) == "delivered"
    assert outcome_of(_attempt(410), max_attempts=3) == "disabled"
    assert outcome_of(_attempt(302), max_attempts=3) == "retrying"
    assert outcome_of(_attempt(None, number=3), max_attempts=3) == "failed"
