"""The job store: the one owner of job state, in Redis, with atomic lifecycle transitions."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, cast

import redis

from shared.errors import ErrorCode, TesseraError
from shared.schemas import JobError, JobRecord, JobStatus, Stage

WorkStage = Literal["preprocess", "inference"]

_RUNNING_STATUS: dict[WorkStage, JobStatus] = {
    "preprocess": JobStatus.preprocessing,
    "inference": JobStatus.inferring,
}
# Retention of job records and their events; issue-level policies may shorten it per job.
RECORD_TTL_SECONDS = 7 * 24 * 3600


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Transition:
    """A job after a transition attempt; `changed` says whether this call changed its status."""

    record: JobRecord
    changed: bool


class JobNotFound(KeyError):
    """No job has this id."""


class JobStore:
    """Job records and their event streams in Redis."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix

    @classmethod
    def from_url(cls, url: str, prefix: str) -> "JobStore":
        """A store on the Redis at url."""
        return cls(redis.Redis.from_url(url, decode_responses=True), prefix)

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events_key(self, job_id: str) -> str:
        """The Redis stream that records every state change of a job."""
        return f"{self.prefix}:job:{job_id}:events"

    def create(self, record: JobRecord) -> None:
        """Store a new job and its first event; an existing id is an error."""
        with self.redis.pipeline() as pipe:
            pipe.set(self._key(record.id), record.model_dump_json(), nx=True,
                     ex=RECORD_TTL_SECONDS)
            self._append_event(pipe, record)
            created, *_ = pipe.execute()
        if not created:
            raise ValueError(f"job {record.id} already exists")

    def get(self, job_id: str) -> JobRecord:
        """The stored job (JobNotFound when there is none)."""
        raw = self.redis.get(self._key(job_id))
        if raw is None:
            raise JobNotFound(job_id)
        return JobRecord.model_validate_json(raw)

    def events(self, job_id: str) -> list[dict[str, str]]:
        """Every recorded state change of a job, oldest first."""
        entries = cast(list[tuple[str, dict[str, str]]], self.redis.xrange(self.events_key(job_id)))
        return [fields for _, fields in entries]

    def read_events(self, job_id: str, *, after: str,
                    block_seconds: float) -> list[tuple[str, dict[str, str]]]:
        """Events newer than the id after, waiting up to block_seconds for the first one."""
        batches = cast(list[tuple[str, list[tuple[str, dict[str, str]]]]], self.redis.xread(
            {self.events_key(job_id): after}, block=int(block_seconds * 1000)))
        return batches[0][1] if batches else []

    def append_output(self, job_id: str, delta: str) -> None:
        """Record a piece of a running job's answer as an "output" event."""
        self.redis.xadd(self.events_key(job_id),
                        {"type": "output", "data": json.dumps({"delta": delta})})

    def claim(self, job_id: str, stage: WorkStage, *, max_attempts: int,
              worker: str) -> Transition:
        """Start (or restart) a stage in worker; fails the job once the stage used its attempts."""

        def start(record: JobRecord) -> JobRecord | None:
            if record.status.terminal:
                return None
            attempts = record.attempts.get(stage, 0)
            if attempts >= max_attempts:
                return _failed(record, TesseraError(
                    ErrorCode.worker_lost,
                    f"The {stage} stage was interrupted {attempts} times (its worker process "
                    "died); the job was stopped to protect the service. Retry it, or send "
                    "smaller media if it keeps failing."), stage)
            record.attempts = {**record.attempts, stage: attempts + 1}
            record.status = _RUNNING_STATUS[stage]
            record.worker = worker
            now = utcnow()
            if stage == "preprocess":
                record.times.preprocess_started_at = now
            else:
                record.times.inference_started_at = now
            return record

        return self._update(job_id, start)

    def finish_preprocess(self, job_id: str) -> Transition:
        """Record that inputs are prepared; the job waits for an inference worker next."""

        def finish(record: JobRecord) -> JobRecord | None:
            if record.status.terminal:
                return None
            record.times.preprocess_finished_at = utcnow()
            return record

        return self._update(job_id, finish)

    def succeed(self, job_id: str, result_key: str) -> Transition:
        """Mark the job succeeded with its result, unless it already ended."""

        def succeed(record: JobRecord) -> JobRecord | None:
            if record.status.terminal:
                return None
            record.status = JobStatus.succeeded
            record.result_key = result_key
            record.times.finished_at = utcnow()
            return record

        return self._update(job_id, succeed)

    def fail(self, job_id: str, error: TesseraError, stage: Stage) -> Transition:
        """Mark the job failed with a coded error, unless it already ended."""

        def fail(record: JobRecord) -> JobRecord | None:
            return None if record.status.terminal else _failed(record, error, stage)

        return self._update(job_id, fail)

    def _update(self, job_id: str, mutate: Callable[[JobRecord], JobRecord | None]) -> Transition:
        """Apply mutate atomically (optimistic WATCH/MULTI); None from mutate means no change."""
        key = self._key(job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        raise JobNotFound(job_id)
                    before = JobRecord.model_validate_json(raw)
                    after = mutate(before.model_copy(deep=True))
                    if after is None:
                        pipe.unwatch()
                        return Transition(before, changed=False)
                    after.updated_at = utcnow()
                    pipe.multi()
                    pipe.set(key, after.model_dump_json(), keepttl=True)
                    if after.status != before.status:
                        self._append_event(pipe, after)
                    pipe.execute()
                    return Transition(after, changed=after.status != before.status)
                except redis.WatchError:
                    continue

    def _append_event(self, pipe: redis.client.Pipeline, record: JobRecord) -> None:
        data = {"status": record.status.value, "at": record.updated_at.isoformat()}
        if record.error is not None:
            data["error"] = record.error.model_dump_json()
        pipe.xadd(self.events_key(record.id), {"type": "status", "data": json.dumps(data)})
        pipe.expire(self.events_key(record.id), RECORD_TTL_SECONDS)


def _failed(record: JobRecord, error: TesseraError, stage: Stage) -> JobRecord:
    record.status = JobStatus.failed
    record.error = JobError(code=error.code, message=error.message, retryable=error.retryable,
                            stage=stage)
    record.times.finished_at = utcnow()
    return record
