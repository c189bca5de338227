"""Builds, signs and posts webhook events, and remembers which were delivered."""

import json
import random
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

import httpx
import redis

from shared.job_store import utcnow
from shared.schemas import JobPublic, JobRecord, JobResult
from shared.webhook_signing import signature_headers

DELIVERED_TTL_SECONDS = 7 * 24 * 3600
RESULT_URL_TTL = timedelta(days=1)


def event_id(job_id: str, event_type: str) -> str:
    """The stable id of one event: receivers and our ledger deduplicate on it."""
    return f"evt_{job_id}_{event_type.removeprefix('job.')}"


def build_payload(*, record: JobRecord, event_type: str, result: JobResult | None,
                  result_url: str | None, base_url: str) -> bytes:
    """The JSON body: the job, and its result inline or as a presigned URL when it is large."""
    data = JobPublic.from_record(record, base_url).model_dump(mode="json")
    if result is not None:
        data["result"] = result.model_dump(mode="json")
    if result_url is not None:
        data["result_url"] = result_url
    body = {"type": event_type, "timestamp": utcnow().isoformat(), "data": data}
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt, as recorded in the job's delivery log."""

    event_id: str
    status_code: int | None
    latency_ms: float
    error: str | None
    retry_after_seconds: float | None

    @property
    def delivered(self) -> bool:
        """2xx counts as delivered; a redirect is not followed and counts as a failure."""
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def give_up(self) -> bool:
        """410 Gone means the receiver asks us to stop sending."""
        return self.status_code == 410


def post_signed(client: httpx.Client, url: str, *, message_id: str, body: bytes, secret: str,
                timeout: float) -> Attempt:
    """POST one signed event and describe what happened."""
    headers = {"content-type": "application/json",
               **signature_headers(secret, message_id, int(time.time()), body)}
    started = time.perf_counter()
    try:
        response = client.post(url, content=body, headers=headers, timeout=timeout,
                               follow_redirects=False)
    except httpx.HTTPError as failure:
        return Attempt(message_id, None, _ms_since(started),
                       f"{type(failure).__name__}: {failure}", None)
    error = None if response.is_success else f"HTTP {response.status_code}"
    return Attempt(message_id, response.status_code, _ms_since(started), error,
                   _retry_after(response))


def backoff_seconds(attempt: int, *, base: float, cap: float,
                    retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter; a receiver's Retry-After is honoured as a floor."""
    delay = random.uniform(0, min(cap, base * 2**attempt))
    return max(delay, retry_after or 0.0)


class DeliveryLedger:
    """Which events were delivered, who is sending one now, and every attempt per job."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix

    def delivered(self, message_id: str) -> bool:
        """True once the event was acknowledged by the receiver."""
        return bool(self.redis.exists(f"{self.prefix}:webhook:{message_id}:delivered"))

    def try_lock(self, message_id: str, seconds: float) -> bool:
        """Take the right to send this event now; False when another worker holds it."""
        return bool(self.redis.set(f"{self.prefix}:webhook:{message_id}:sending", "1", nx=True,
                                   px=int(seconds * 1000)))

    def record(self, job_id: str, attempt: Attempt) -> None:
        """Log the attempt under the job; mark the event delivered on success."""
        entry = {**attempt.__dict__, "at": utcnow().isoformat()}
        with self.redis.pipeline() as pipe:
            pipe.rpush(f"{self.prefix}:job:{job_id}:deliveries", json.dumps(entry))
            pipe.expire(f"{self.prefix}:job:{job_id}:deliveries", DELIVERED_TTL_SECONDS)
            if attempt.delivered:
                pipe.set(f"{self.prefix}:webhook:{attempt.event_id}:delivered", "1",
                         ex=DELIVERED_TTL_SECONDS)
            pipe.delete(f"{self.prefix}:webhook:{attempt.event_id}:sending")
            pipe.execute()

    def attempts(self, job_id: str) -> list[dict[str, object]]:
        """Every delivery attempt made for a job, oldest first."""
        entries = cast(list[str],
                       self.redis.lrange(f"{self.prefix}:job:{job_id}:deliveries", 0, -1))
        return [json.loads(entry) for entry in entries]


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _retry_after(response: httpx.Response) -> float | None:
    if response.status_code not in (429, 503):
        return None
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
