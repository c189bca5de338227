"""Webhook events: their types, the per-job outbox (filter, sequence, stored events) and the
schedule of due deliveries that the webhook worker polls."""

import json
import time
import uuid
from datetime import datetime
from typing import Any, Literal, Self, cast

import redis
from celery import Celery
from opentelemetry import propagate
from pydantic import BaseModel, Field, model_validator

from shared.job_store import utcnow
from shared.queues import WEBHOOK_QUEUE, WEBHOOK_TASK
from shared.schemas import JobRecord, JobStatus, WebhookEventFilter
from shared.settings import BaseServiceSettings

WebhookEventType = Literal["job.started", "job.progress", "job.output", "job.succeeded",
                           "job.failed", "job.canceled", "job.expired"]

TERMINAL_EVENTS: dict[JobStatus, WebhookEventType] = {
    JobStatus.succeeded: "job.succeeded",
    JobStatus.failed: "job.failed",
    JobStatus.canceled: "job.canceled",
    JobStatus.expired: "job.expired",
}
_FILTERS: dict[WebhookEventType, WebhookEventFilter] = {
    "job.started": "started", "job.progress": "progress", "job.output": "output"}
# Events a job has at most once keep a stable id, so a redelivered task re-queues the same one.
_ONCE: frozenset[WebhookEventType] = frozenset({"job.started", *TERMINAL_EVENTS.values()})

# Events, ledger and delivery log outlive the longest retry schedule (see retry_horizon_seconds).
WEBHOOK_DATA_TTL_SECONDS = 7 * 24 * 3600

# Retry schedule defaults: 12 attempts spread over roughly a day.
DEFAULT_MAX_ATTEMPTS = 12
DEFAULT_BACKOFF_BASE_SECONDS = 60.0
DEFAULT_BACKOFF_MAX_SECONDS = 8 * 3600.0
DEFAULT_RETRY_AFTER_MAX_SECONDS = 3600.0
DEFAULT_TIMEOUT_SECONDS = 10.0


class WebhookEvent(BaseModel):
    """One event about a job, stored until its delivery is settled."""

    id: str
    job_id: str
    type: WebhookEventType
    sequence: int
    created_at: datetime
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        """True for the event that reports how the job ended."""
        return self.type not in _FILTERS


class WebhookDelivery(BaseModel):
    """Queue payload asking the webhook worker to send one stored event (one attempt)."""

    schema_version: Literal[2] = 2
    job_id: str
    event_id: str
    # Attempts already made: this one is attempt + 1.
    attempt: int = Field(default=0, ge=0)
    # A redelivery asked for by the client: sent even if delivered before or the URL is disabled.
    force: bool = False
    # W3C trace context of whoever scheduled it, so a retry sent from the Redis schedule hours
    # later still joins the job's trace (Celery carries it only inside its own messages).
    trace_context: dict[str, str] = Field(default_factory=dict)
    # Unique per scheduled attempt: a redelivered copy of the same message is not sent again.
    token: str = Field(default_factory=lambda: uuid.uuid4().hex)


# delivered: 2xx. retrying / failed: another attempt is scheduled / that was the last one.
# disabled: the receiver answered 410 and its URL is now off. skipped: not sent to a disabled URL.
# interrupted: the worker stopped before the outcome was recorded; it is sent again at once.
Outcome = Literal["delivered", "retrying", "failed", "disabled", "skipped", "interrupted"]


class AttemptInFlight(BaseModel):
    """An attempt being sent now, recorded (with a lease) before its POST, so that a worker
    dying before the outcome is recorded costs a prompt resend with the same webhook-id."""

    delivery: WebhookDelivery
    event_type: WebhookEventType
    number: int
    started_at: datetime


# What begin() found: go ahead, a copy of a message already handled, or another attempt at the
# same event still in flight.
BeginOutcome = Literal["started", "duplicate", "busy"]


class DeliveryAttempt(BaseModel):
    """One delivery attempt, as kept in the job's delivery log."""

    event_id: str
    event_type: WebhookEventType
    number: int
    at: datetime
    status_code: int | None
    latency_ms: float
    error: str | None
    retry_after_seconds: float | None = None
    outcome: Outcome = "failed"
    next_attempt_at: datetime | None = None

    @property
    def delivered(self) -> bool:
        """2xx counts as delivered; a redirect is not followed and counts as a failure."""
        return self.status_code is not None and 200 <= self.status_code < 300


def wanted(record: JobRecord, event_type: WebhookEventType) -> bool:
    """True when the job has a webhook and its filter asks for this event (terminal: always)."""
    if record.webhook_url is None:
        return False
    wanted_filter = _FILTERS.get(event_type)
    return wanted_filter is None or wanted_filter in record.webhook_events


def retry_delays(*, max_attempts: int, base: float, cap: float,
                 retry_after_cap: float) -> list[float]:
    """The longest wait before each retry: backoff capped at cap, or a capped Retry-After."""
    return [max(min(cap, base * 2.0**n), retry_after_cap) for n in range(max_attempts - 1)]


def retry_horizon_seconds(*, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                          base: float = DEFAULT_BACKOFF_BASE_SECONDS,
                          cap: float = DEFAULT_BACKOFF_MAX_SECONDS,
                          retry_after_cap: float = DEFAULT_RETRY_AFTER_MAX_SECONDS,
                          timeout: float = DEFAULT_TIMEOUT_SECONDS) -> float:
    """How long after an event is queued its last retry may run: keep results at least this
    long after a job ends, or a late retry links to a result that is gone."""
    waits = retry_delays(max_attempts=max_attempts, base=base, cap=cap,
                         retry_after_cap=retry_after_cap)
    return sum(waits) + max_attempts * timeout


# A claimed delivery stays scheduled this far ahead until its taker settles it, so a poller that
# dies between claiming and queuing it loses nothing.
CLAIM_SECONDS = 30.0
# Push a due entry's time to ARGV[3] if it is still due (1), so one poller alone takes it.
_CLAIM_DUE = """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""


class WebhookOutbox:
    """A job's webhook events in Redis, numbered in creation order, and the delivery schedule."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix
        self.schedule_key = f"{prefix}:webhook:schedule"
        self._claim = client.register_script(_CLAIM_DUE)

    def _events_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:webhook-events"

    def create(self, record: JobRecord, event_type: WebhookEventType,
               data: dict[str, Any] | None = None) -> WebhookEvent | None:
        """Store a new event the job wants (None if it does not); a once-only event that
        exists already is returned as it was."""
        if not wanted(record, event_type):
            return None
        once_id = (f"evt_{record.id}_{event_type.removeprefix('job.')}"
                   if event_type in _ONCE else None)
        if once_id is not None and (existing := self.get(record.id, once_id)) is not None:
            return existing
        sequence_key = f"{self.prefix}:job:{record.id}:webhook-sequence"
        with self.redis.pipeline() as pipe:
            pipe.incr(sequence_key)
            pipe.expire(sequence_key, WEBHOOK_DATA_TTL_SECONDS)
            sequence, _ = pipe.execute()
        event = WebhookEvent(
            id=once_id or f"evt_{record.id}_{sequence}",
            job_id=record.id, type=event_type, sequence=sequence, created_at=utcnow(),
            data=data or {})
        with self.redis.pipeline() as pipe:
            pipe.hsetnx(self._events_key(record.id), event.id, event.model_dump_json())
            pipe.expire(self._events_key(record.id), WEBHOOK_DATA_TTL_SECONDS)
            stored, _ = pipe.execute()
        # A concurrent copy of a once-only event won the race: its sequence stands.
        return event if stored else self.get(record.id, event.id)

    def get(self, job_id: str, event_id: str) -> WebhookEvent | None:
        """One stored event of a job, or None."""
        raw = cast(str | None, self.redis.hget(self._events_key(job_id), event_id))
        return None if raw is None else WebhookEvent.model_validate_json(raw)

    def events(self, job_id: str) -> list[WebhookEvent]:
        """Every stored event of a job, in sequence order."""
        raw = cast(dict[str, str], self.redis.hgetall(self._events_key(job_id)))
        events = [WebhookEvent.model_validate_json(item) for item in raw.values()]
        return sorted(events, key=lambda event: event.sequence)

    def schedule(self, delivery: WebhookDelivery, due_at: float) -> None:
        """Send delivery once the Unix time due_at has passed (the webhook worker polls); it
        keeps the current trace context."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if carrier:
            delivery = delivery.model_copy(update={"trace_context": carrier})
        self.redis.zadd(self.schedule_key, {delivery.model_dump_json(): due_at})

    def take_due(self, now: float, limit: int = 100) -> list[WebhookDelivery]:
        """Claim and return deliveries due by now, each for one caller only; call settle once a
        delivery is queued (an unsettled one falls due again after CLAIM_SECONDS)."""
        due = cast(list[str], self.redis.zrangebyscore(self.schedule_key, "-inf", now,
                                                       start=0, num=limit))
        return [WebhookDelivery.model_validate(json.loads(member)) for member in due
                if self._claim(keys=[self.schedule_key], args=[member, now, now + CLAIM_SECONDS])]

    def settle(self, delivery: WebhookDelivery) -> None:
        """Forget a claimed delivery now that it is queued."""
        self.redis.zrem(self.schedule_key, delivery.model_dump_json())


def queue_event(celery: Celery, client: redis.Redis, prefix: str, record: JobRecord,
                event_type: WebhookEventType, data: dict[str, Any] | None = None) -> None:
    """Store the event if the job wants it and send its first delivery attempt to the webhook
    worker; usable from any process with a Celery app and the Redis of the job store."""
    event = WebhookOutbox(client, prefix).create(record, event_type, data)
    if event is not None:
        delivery = WebhookDelivery(job_id=record.id, event_id=event.id)
        celery.send_task(WEBHOOK_TASK, kwargs=delivery.model_dump(), queue=WEBHOOK_QUEUE)


# Start an attempt: 0 when its message was handled already, 2 when another attempt at the event
# holds the send lock, else 1 after taking the token, the lock and the in-flight lease.
_BEGIN = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 2 end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return 1
"""
_BEGIN_OUTCOMES: dict[int, BeginOutcome] = {0: "duplicate", 1: "started", 2: "busy"}
# Claim a lapsed in-flight attempt (1) and release its send lock if it still holds it.
_TAKE_INTERRUPTED = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
return 1
"""


class DeliveryLedger:
    """Which events were delivered, which attempts are in flight, and every attempt per job."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix
        self._in_flight = f"{prefix}:webhook:in-flight"
        self._begin = client.register_script(_BEGIN)
        self._take = client.register_script(_TAKE_INTERRUPTED)

    def _log_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:deliveries"

    def _token_key(self, token: str) -> str:
        return f"{self.prefix}:webhook:token:{token}"

    def _sending_key(self, event_id: str) -> str:
        return f"{self.prefix}:webhook:{event_id}:sending"

    def delivered(self, event_id: str) -> bool:
        """True once the event was acknowledged by the receiver."""
        return bool(self.redis.exists(f"{self.prefix}:webhook:{event_id}:delivered"))

    def begin(self, attempt: AttemptInFlight, lease_seconds: float) -> BeginOutcome:
        """Record the attempt as in flight until its lease ends, unless its message was
        handled already or another attempt at the event is in flight (atomic)."""
        delivery = attempt.delivery
        return _BEGIN_OUTCOMES[int(self._begin(
            keys=[self._token_key(delivery.token), self._sending_key(delivery.event_id),
                  self._in_flight],
            args=[delivery.token, int(lease_seconds * 1000), time.time() + lease_seconds,
                  attempt.model_dump_json(), WEBHOOK_DATA_TTL_SECONDS]))]

    def record(self, job_id: str, attempt: DeliveryAttempt,
               in_flight: AttemptInFlight | None = None) -> None:
        """Log the attempt under the job, mark the event delivered on success, and settle the
        attempt that was in flight."""
        with self.redis.pipeline() as pipe:
            pipe.rpush(self._log_key(job_id), attempt.model_dump_json())
            pipe.expire(self._log_key(job_id), WEBHOOK_DATA_TTL_SECONDS)
            if attempt.delivered:
                pipe.set(f"{self.prefix}:webhook:{attempt.event_id}:delivered", "1",
                         ex=WEBHOOK_DATA_TTL_SECONDS)
            if in_flight is not None:
                pipe.zrem(self._in_flight, in_flight.model_dump_json())
                pipe.delete(self._sending_key(attempt.event_id))
            pipe.execute()

    def take_interrupted(self, now: float, limit: int = 100) -> list[AttemptInFlight]:
        """Attempts whose lease ended with no outcome recorded (their worker died), each handed
        to one caller, with the event's send lock released so it can go again at once."""
        lapsed = cast(list[str], self.redis.zrangebyscore(self._in_flight, "-inf", now,
                                                          start=0, num=limit))
        taken = []
        for member in lapsed:
            attempt = AttemptInFlight.model_validate_json(member)
            if self._take(keys=[self._in_flight,
                                self._sending_key(attempt.delivery.event_id)],
                          args=[member, attempt.delivery.token]):
                taken.append(attempt)
        return taken

    def attempts(self, job_id: str) -> list[DeliveryAttempt]:
        """Every delivery attempt made for a job, oldest first."""
        entries = cast(list[str], self.redis.lrange(self._log_key(job_id), 0, -1))
        return [DeliveryAttempt.model_validate_json(entry) for entry in entries]


class WebhookScheduleSettings(BaseServiceSettings):
    """The retry schedule of webhook deliveries: read by the webhook worker, and by the ingest
    API, which keeps a job with a webhook at least until its last retry."""

    WEBHOOK_TIMEOUT_SECONDS: float = Field(default=DEFAULT_TIMEOUT_SECONDS, gt=0)
    WEBHOOK_MAX_ATTEMPTS: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1)
    WEBHOOK_BACKOFF_BASE_SECONDS: float = Field(default=DEFAULT_BACKOFF_BASE_SECONDS, gt=0)
    WEBHOOK_BACKOFF_MAX_SECONDS: float = Field(default=DEFAULT_BACKOFF_MAX_SECONDS, gt=0)
    # A receiver's Retry-After is honoured up to this, so the retry horizon stays bounded.
    WEBHOOK_RETRY_AFTER_MAX_SECONDS: float = Field(default=DEFAULT_RETRY_AFTER_MAX_SECONDS, ge=0)

    def retry_horizon(self) -> float:
        """Seconds from an event's first attempt to its last retry, at most."""
        return retry_horizon_seconds(
            max_attempts=self.WEBHOOK_MAX_ATTEMPTS, base=self.WEBHOOK_BACKOFF_BASE_SECONDS,
            cap=self.WEBHOOK_BACKOFF_MAX_SECONDS,
            retry_after_cap=self.WEBHOOK_RETRY_AFTER_MAX_SECONDS,
            timeout=self.WEBHOOK_TIMEOUT_SECONDS)

    @model_validator(mode="after")
    def _retries_end_before_their_events_expire(self) -> Self:
        horizon = self.retry_horizon()
        if horizon > WEBHOOK_DATA_TTL_SECONDS:
            raise ValueError(f"the retry schedule spans {horizon:.0f} s, longer than events are "
                             f"kept ({WEBHOOK_DATA_TTL_SECONDS} s): lower the attempts or backoff")
        return self
