"""Builds, signs and posts webhook events; remembers deliveries, attempts and disabled URLs."""

import json
import logging
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, cast

import httpx
import redis

from services.webhook_worker.config import WebhookSettings
from shared.job_store import JobNotFound, JobStore, utcnow
from shared.object_store import ObjectStore
from shared.schemas import JobPublic, JobRecord, JobResult
from shared.webhook_events import (
    AttemptInFlight,
    DeliveryAttempt,
    DeliveryLedger,
    Outcome,
    WebhookDelivery,
    WebhookEvent,
    WebhookOutbox,
)
from shared.webhook_secrets import WebhookSecretStore
from shared.webhook_signing import signature_headers

log = logging.getLogger(__name__)

RESULT_URL_TTL = timedelta(days=1)

def build_payload(*, event: WebhookEvent, record: JobRecord, result: JobResult | None,
                  result_url: str | None, base_url: str) -> bytes:
    """The JSON body: a terminal event carries the job and its result (inline, or a presigned
    URL when large); the others only their own small data."""
    data: dict[str, Any] = {"id": event.job_id, **event.data}
    if event.terminal:
        data = JobPublic.from_record(record, base_url).model_dump(mode="json")
        if result is not None:
            data["result"] = result.model_dump(mode="json")
        if result_url is not None:
            data["result_url"] = result_url
    body = {"type": event.type, "timestamp": event.created_at.isoformat(),
            "sequence": event.sequence, "data": data}
    return json.dumps(body, separators=(",", ":")).encode()


def post_signed(client: httpx.Client, url: str, *, event: WebhookEvent, number: int,
                body: bytes, secrets: list[str]) -> DeliveryAttempt:
    """POST one event, signed with every active secret, and describe what happened."""
    headers = {"content-type": "application/json",
               **signature_headers(secrets, event.id, int(time.time()), body)}
    at, started = utcnow(), time.perf_counter()
    attempt = DeliveryAttempt(event_id=event.id, event_type=event.type, number=number, at=at,
                              status_code=None, latency_ms=0.0, error=None)
    try:
        response = client.post(url, content=body, headers=headers, follow_redirects=False)
    except httpx.HTTPError as failure:
        return attempt.model_copy(update={"latency_ms": _ms_since(started),
                                          "error": f"{type(failure).__name__}: {failure}"})
    error = None
    if response.is_redirect:
        error = f"redirect not followed to {response.headers.get('location', '?')}"
    elif not response.is_success:
        error = f"HTTP {response.status_code}"
    return attempt.model_copy(update={
        "status_code": response.status_code, "latency_ms": _ms_since(started), "error": error,
        "retry_after_seconds": retry_after(response)})


def outcome_of(attempt: DeliveryAttempt, *, max_attempts: int) -> Outcome:
    """What an attempt means for the event: delivered, disabled, or retried until the last."""
    if attempt.delivered:
        return "delivered"
    if attempt.status_code == 410:
        return "disabled"
    return "failed" if attempt.number >= max_attempts else "retrying"


def backoff_seconds(attempt: int, *, base: float, cap: float, retry_after: float | None = None,
                    retry_after_cap: float = float("inf")) -> float:
    """Exponential backoff with equal jitter (half fixed, half random, so the schedule keeps
    its shape); a receiver's Retry-After, up to retry_after_cap, is a floor."""
    ceiling = min(cap, base * 2.0**attempt)
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    return max(delay, min(retry_after or 0.0, retry_after_cap))


def retry_after(response: httpx.Response) -> float | None:
    """Seconds a 429 or 503 asks us to wait (delta-seconds or an HTTP date), else None."""
    value = response.headers.get("retry-after", "").strip()
    if response.status_code not in (429, 503) or not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when: datetime = parsedate_to_datetime(value)
        return max(0.0, (when - utcnow()).total_seconds())
    except (TypeError, ValueError):
        return None


class DisabledEndpoints:
    """Webhook URLs a receiver turned off with 410, per tenant, and since when.

    A disabled URL gets no more events of jobs created before it was disabled; a job submitted
    later with the same URL re-enables it (the client named it again), and so does any 2xx.
    """

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix

    def _key(self, tenant_id: str) -> str:
        return f"{self.prefix}:webhook-disabled:{tenant_id}"

    def disabled_since(self, tenant_id: str, url: str) -> datetime | None:
        """When the URL was disabled, or None while it is enabled."""
        raw = cast(str | None, self.redis.hget(self._key(tenant_id), url))
        return None if raw is None else datetime.fromisoformat(raw)

    def disable(self, tenant_id: str, url: str) -> None:
        """Turn the URL off from now on."""
        self.redis.hset(self._key(tenant_id), url, utcnow().isoformat())

    def enable(self, tenant_id: str, url: str) -> None:
        """Turn the URL back on."""
        self.redis.hdel(self._key(tenant_id), url)


class WebhookSender:
    """Sends one stored event per call and decides what happens next: done, retry or stop."""

    def __init__(self, *, settings: WebhookSettings, jobs: JobStore, objects: ObjectStore,
                 http: httpx.Client) -> None:
        self.settings = settings
        self.jobs = jobs
        self.objects = objects
        self.http = http
        self.outbox = WebhookOutbox(jobs.redis, settings.KEY_PREFIX)
        self.ledger = DeliveryLedger(jobs.redis, settings.KEY_PREFIX)
        self.disabled = DisabledEndpoints(jobs.redis, settings.KEY_PREFIX)
        self.secrets = WebhookSecretStore(jobs.redis, settings.KEY_PREFIX)

    def send(self, delivery: WebhookDelivery) -> DeliveryAttempt | None:
        """Make one attempt at delivering an event (None when there was nothing to send)."""
        if not delivery.force and self.ledger.delivered(delivery.event_id):
            return None
        event = self.outbox.get(delivery.job_id, delivery.event_id)
        try:
            record = self.jobs.get(delivery.job_id)
        except JobNotFound:
            record = None
        if event is None or record is None or record.webhook_url is None:
            log.warning("webhook %s dropped: its job or event no longer exists", delivery.event_id)
            return None
        url, number = str(record.webhook_url), delivery.attempt + 1
        since = self.disabled.disabled_since(record.tenant_id, url)
        if not delivery.force and since is not None and record.times.created_at <= since:
            skipped = DeliveryAttempt(
                event_id=event.id, event_type=event.type, number=number, at=utcnow(),
                status_code=None, latency_ms=0.0, outcome="skipped",
                error=f"not sent: the receiver disabled this URL with 410 at {since.isoformat()}")
            self.ledger.record(record.id, skipped)
            return skipped
        in_flight = AttemptInFlight(delivery=delivery, event_type=event.type, number=number,
                                    started_at=utcnow())
        began = self.ledger.begin(in_flight, self.lease_seconds)
        if began == "duplicate":
            log.info("webhook %s: attempt %d was handled already; dropping this copy", event.id,
                     number)
            return None
        if began == "busy":
            # Another worker is sending it now: look again once that attempt has settled.
            self.outbox.schedule(delivery, time.time() + self.lease_seconds)
            return None
        try:
            secrets = self.secrets.signing_secrets(
                record.api_key_id,
                deployment_secret=self.settings.WEBHOOK_SECRET.get_secret_value())
            attempt = post_signed(self.http, url, event=event, number=number,
                                  body=self._payload(event, record), secrets=secrets)
        except Exception as failure:
            # The task's message is acknowledged already: an S3 or Redis error while building
            # the request is a failed attempt, retried on schedule, or the event is lost.
            log.exception("webhook %s: attempt %d failed before sending", event.id, number)
            attempt = DeliveryAttempt(
                event_id=event.id, event_type=event.type, number=number, at=utcnow(),
                status_code=None, latency_ms=0.0,
                error=f"not sent: {type(failure).__name__}: {failure}")
        attempt = self._settle(attempt, record, url, delivery)
        self.ledger.record(record.id, attempt, in_flight)
        return attempt

    @property
    def lease_seconds(self) -> float:
        """How long an attempt may stay in flight: its HTTP timeout and a margin."""
        return self.settings.WEBHOOK_TIMEOUT_SECONDS + 5

    def resend_interrupted(self, lost: AttemptInFlight) -> None:
        """Log an attempt whose worker died before recording its outcome and send it again
        now: the receiver may have it already, and sees the same webhook-id again."""
        delivery = lost.delivery
        resend = delivery.model_copy(update={"attempt": lost.number - 1,
                                             "token": uuid.uuid4().hex})
        log.warning("webhook %s: attempt %d was interrupted; sending it again", delivery.event_id,
                    lost.number)
        self.ledger.record(delivery.job_id, DeliveryAttempt(
            event_id=delivery.event_id, event_type=lost.event_type, number=lost.number,
            at=lost.started_at, status_code=None, latency_ms=0.0, outcome="interrupted",
            error="the worker stopped before this attempt's outcome was recorded; it is sent "
                  "again with the same webhook-id", next_attempt_at=utcnow()))
        self.outbox.schedule(resend, time.time())

    def _settle(self, attempt: DeliveryAttempt, record: JobRecord, url: str,
                delivery: WebhookDelivery) -> DeliveryAttempt:
        outcome = outcome_of(attempt, max_attempts=self.settings.WEBHOOK_MAX_ATTEMPTS)
        if outcome == "delivered":
            self.disabled.enable(record.tenant_id, url)
        elif outcome == "disabled":
            self.disabled.disable(record.tenant_id, url)
        elif outcome == "failed":
            log.warning("webhook %s undeliverable after %d attempts", attempt.event_id,
                        attempt.number)
        if outcome != "retrying":
            return attempt.model_copy(update={"outcome": outcome})
        due = time.time() + backoff_seconds(
            delivery.attempt, base=self.settings.WEBHOOK_BACKOFF_BASE_SECONDS,
            cap=self.settings.WEBHOOK_BACKOFF_MAX_SECONDS, retry_after=attempt.retry_after_seconds,
            retry_after_cap=self.settings.WEBHOOK_RETRY_AFTER_MAX_SECONDS)
        self.outbox.schedule(delivery.model_copy(update={"attempt": attempt.number,
                                                       "token": uuid.uuid4().hex}), due)
        return attempt.model_copy(update={"outcome": outcome,
                                          "next_attempt_at": datetime.fromtimestamp(due, UTC)})

    def _payload(self, event: WebhookEvent, record: JobRecord) -> bytes:
        result, result_url = None, None
        if event.terminal and record.result_key is not None:
            raw = self.objects.get_bytes(record.result_key)
            if len(raw) <= self.settings.WEBHOOK_INLINE_RESULT_BYTES:
                result = JobResult.model_validate_json(raw)
            else:
                result_url = self.objects.presigned_get_url(record.result_key, RESULT_URL_TTL)
        return build_payload(event=event, record=record, result=result, result_url=result_url,
                             base_url=self.settings.PUBLIC_BASE_URL)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
