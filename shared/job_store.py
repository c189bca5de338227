"""The job store: the one owner of job state, in Redis, with atomic lifecycle transitions."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, cast

import redis

from shared.errors import ErrorCode, TesseraError
from shared.redis_documents import update_document
from shared.schemas import JobError, JobRecord, JobStatus, Progress, Stage

WorkStage = Literal["preprocess", "inference"]

_RUNNING_STATUS: dict[WorkStage, JobStatus] = {
    "preprocess": JobStatus.preprocessing,
    "inference": JobStatus.inferring,
}
# The longest a job may stay unfinished; its record outlives this by its retention.
MAX_OPEN_SECONDS = 7 * 24 * 3600
# How long an id whose job was purged answers 410 instead of 404.
GONE_TTL_SECONDS = 90 * 24 * 3600


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Transition:
    """A job after a transition attempt; `changed` says whether this call changed its status;
    `superseded` that a claimed stage had already been done (a duplicate message)."""

    record: JobRecord
    changed: bool
    superseded: bool = False


class JobNotFound(KeyError):
    """No job has this id."""


class JobGone(JobNotFound):
    """The job existed but was purged when its retention ended (a kind of not found)."""

    def __init__(self, job_id: str, tenant_id: str) -> None:
        super().__init__(job_id)
        self.tenant_id = tenant_id


@dataclass(frozen=True)
class JobFilter:
    """Which of a tenant's jobs a listing returns."""

    statuses: frozenset[JobStatus] = frozenset()
    model: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    metadata: tuple[tuple[str, str], ...] = ()

    def matches(self, record: JobRecord) -> bool:
        """True when the record passes every given condition."""
        return ((not self.statuses or record.status in self.statuses)
                and (self.model is None or record.model == self.model)
                and all(record.metadata.get(key) == value for key, value in self.metadata))


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

    def _tenant_index(self, tenant_id: str) -> str:
        return f"{self.prefix}:tenant:{tenant_id}:jobs"

    def create(self, record: JobRecord) -> None:
        """Store a new job, its first event and its place in its tenant's listing."""
        with self.redis.pipeline() as pipe:
            pipe.set(self._key(record.id), record.model_dump_json(), nx=True,
                     ex=MAX_OPEN_SECONDS + record.retention_seconds)
            self._append_event(pipe, record)
            pipe.zadd(self._tenant_index(record.tenant_id),
                      {record.id: record.times.created_at.timestamp()})
            if record.deadline_at is not None:
                pipe.zadd(f"{self.prefix}:deadlines", {record.id: record.deadline_at.timestamp()})
            created, *_ = pipe.execute()
        if not created:
            raise ValueError(f"job {record.id} already exists")

    def get(self, job_id: str) -> JobRecord:
        """The stored job (JobGone once purged, JobNotFound when there never was one)."""
        raw = self.redis.get(self._key(job_id))
        if raw is None:
            tenant = cast(str | None, self.redis.get(f"{self.prefix}:gone:{job_id}"))
            raise JobNotFound(job_id) if tenant is None else JobGone(job_id, tenant)
        return JobRecord.model_validate_json(raw)

    def list_jobs(self, tenant_id: str, where: JobFilter, *, limit: int,
             cursor: str | None = None) -> tuple[list[JobRecord], str | None]:
        """A tenant's jobs, newest first, and the cursor of the next page (None at the end);
        ValueError for a cursor that is not one this method returned.

        The cursor is the creation time of the last job returned; filters other than time are
        applied while reading, scanning at most a bounded number of jobs per page.
        """
        if cursor is not None:
            float(cursor)  # our cursors are scores; anything else is refused before Redis
        high = f"({cursor}" if cursor else (
            repr(where.created_before.timestamp()) if where.created_before else "+inf")
        low = repr(where.created_after.timestamp()) if where.created_after else "-inf"
        found: list[JobRecord] = []
        scanned = 0
        while len(found) < limit and scanned < LIST_SCAN_LIMIT:
            batch = cast(list[tuple[str, float]], self.redis.zrevrangebyscore(
                self._tenant_index(tenant_id), high, low, start=0, num=limit * 2,
                withscores=True))
            if not batch:
                return found, None
            raws = cast(list[str | None], self.redis.mget([self._key(job_id)
                                                           for job_id, _ in batch]))
            for (_, score), raw in zip(batch, raws, strict=True):
                high, scanned = f"({score!r}", scanned + 1
                record = JobRecord.model_validate_json(raw) if raw else None
                if record is not None and where.matches(record):
                    found.append(record)
                    if len(found) == limit:
                        return found, repr(score)
        return found, high.removeprefix("(") if scanned >= LIST_SCAN_LIMIT else None

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

    def set_progress(self, job_id: str, progress: Progress) -> None:
        """Remember how far a running job is (read by GET /v1/jobs/{id})."""
        self.redis.set(f"{self.prefix}:job:{job_id}:progress", progress.model_dump_json(),
                       ex=MAX_OPEN_SECONDS)

    def progress(self, job_id: str) -> Progress | None:
        """How far a running job is, if its worker said."""
        raw = cast(str | None, self.redis.get(f"{self.prefix}:job:{job_id}:progress"))
        return None if raw is None else Progress.model_validate_json(raw)

    def append_output(self, job_id: str, delta: str) -> None:
        """Record a piece of a running job's answer as an "output" event."""
        self.redis.xadd(self.events_key(job_id),
                        {"type": "output", "data": json.dumps({"delta": delta})})

    def claim(self, job_id: str, stage: WorkStage, *, max_attempts: int,
              worker: str) -> Transition:
        """Start (or restart) a stage in worker; ends the job instead when it was canceled, its
        deadline passed before it started, or the stage used up its attempts."""
        current = self.get(job_id)
        if stage == "preprocess" and current.times.preprocess_finished_at is not None:
            # An aged batch job's promoted copy already ran this stage (never unset again).
            return Transition(current, changed=False, superseded=True)

        def start(record: JobRecord) -> JobRecord | None:
            if record.status.terminal:
                return None
            if record.status is JobStatus.canceling:
                return _ended(record, JobStatus.canceled, CANCELED, stage)
            if (record.status is JobStatus.queued and record.deadline_at is not None
                    and record.deadline_at < utcnow()):
                return _ended(record, JobStatus.expired, _expired(record), stage)
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

    def request_cancel(self, job_id: str) -> Transition:
        """Cancel a queued job at once; ask a running one to stop at its next safe point."""

        def cancel(record: JobRecord) -> JobRecord | None:
            if record.status.terminal or record.status is JobStatus.canceling:
                return None
            waiting_for_inference = (record.status is JobStatus.preprocessing
                                     and record.times.preprocess_finished_at is not None)
            if record.status is JobStatus.queued or waiting_for_inference:
                # Nothing runs it now; ending it here spares waking a GPU worker to cancel it.
                return _ended(record, JobStatus.canceled, CANCELED,
                              "inference" if waiting_for_inference else "ingest")
            record.status = JobStatus.canceling
            return record

        return self._update(job_id, cancel)

    def cancel_requested(self, job_id: str) -> bool:
        """True once a cancel was asked for (a worker's safe-point check)."""
        return self.get(job_id).status in (JobStatus.canceling, JobStatus.canceled)

    def finish_canceled(self, job_id: str, stage: Stage) -> Transition:
        """End a job whose worker stopped because it was asked to."""

        def finish(record: JobRecord) -> JobRecord | None:
            if record.status.terminal:
                return None
            return _ended(record, JobStatus.canceled, CANCELED, stage)

        return self._update(job_id, finish)

    def schedule_aging(self, job_id: str, stage: WorkStage, after_seconds: float) -> None:
        """Promote a batch job's waiting stage to interactive priority after some time."""
        self.redis.zadd(f"{self.prefix}:aging",
                        {f"{job_id}:{stage}": utcnow().timestamp() + after_seconds})

    def take_aged(self, limit: int = 100) -> list[tuple[JobRecord, WorkStage]]:
        """Batch jobs whose stage has waited long enough and still has not started."""
        due = cast(list[str], self.redis.zrangebyscore(
            f"{self.prefix}:aging", 0, utcnow().timestamp(), start=0, num=limit))
        aged: list[tuple[JobRecord, WorkStage]] = []
        for entry in due:
            if not self.redis.zrem(f"{self.prefix}:aging", entry):
                continue
            job_id, _, stage = entry.rpartition(":")
            try:
                record = self.get(job_id)
            except JobNotFound:
                continue
            waiting = (record.status is JobStatus.queued if stage == "preprocess" else
                       record.status is JobStatus.preprocessing
                       and record.times.preprocess_finished_at is not None)
            if waiting:
                aged.append((record, cast(WorkStage, stage)))
        return aged

    def expire_overdue(self, limit: int = 100) -> list[JobRecord]:
        """End queued jobs whose deadline passed (whoever removes an entry handles it)."""
        overdue = cast(list[str], self.redis.zrangebyscore(
            f"{self.prefix}:deadlines", 0, utcnow().timestamp(), start=0, num=limit))
        ended = []
        for job_id in overdue:
            if not self.redis.zrem(f"{self.prefix}:deadlines", job_id):
                continue
            try:
                transition = self._update(job_id, _expire_if_queued)
            except JobNotFound:
                continue
            if transition.changed:
                ended.append(transition.record)
        return ended

    def take_expired_retention(self, limit: int = 100) -> list[JobRecord]:
        """Forget jobs whose retention ended, leaving a tombstone (410); returns them so the
        caller deletes their objects."""
        due = cast(list[str], self.redis.zrangebyscore(
            f"{self.prefix}:retention", 0, utcnow().timestamp(), start=0, num=limit))
        purged = []
        for job_id in due:
            if not self.redis.zrem(f"{self.prefix}:retention", job_id):
                continue
            try:
                record = self.get(job_id)
            except JobNotFound:
                continue
            with self.redis.pipeline() as pipe:
                pipe.set(f"{self.prefix}:gone:{job_id}", record.tenant_id, ex=GONE_TTL_SECONDS)
                pipe.delete(self._key(job_id), self.events_key(job_id))
                pipe.zrem(self._tenant_index(record.tenant_id), job_id)
                pipe.execute()
            purged.append(record)
        return purged

    def _update(self, job_id: str, mutate: Callable[[JobRecord], JobRecord | None]) -> Transition:
        """Apply mutate atomically; None from mutate means no change. A status change records
        its event, and the end of a job starts its retention, in the same transaction."""

        def consequences(pipe: redis.client.Pipeline, before: JobRecord,
                         after: JobRecord) -> None:
            if after.status != before.status:
                self._append_event(pipe, after)
            if after.status.terminal and not before.status.terminal:
                self._start_retention(pipe, after)

        before, after = update_document(self.redis, self._key(job_id), JobRecord, mutate,
                                        missing=lambda: JobNotFound(job_id), also=consequences)
        if after is None:
            return Transition(before, changed=False)
        return Transition(after, changed=after.status != before.status)

    def _start_retention(self, pipe: redis.client.Pipeline, record: JobRecord) -> None:
        """Schedule the purge of an ended job; Redis keeps it a day longer as a safety net."""
        expires_at = utcnow().timestamp() + record.retention_seconds
        pipe.zadd(f"{self.prefix}:retention", {record.id: expires_at})
        pipe.zrem(f"{self.prefix}:deadlines", record.id)
        for key in (self._key(record.id), self.events_key(record.id)):
            pipe.expire(key, record.retention_seconds + 24 * 3600)

    def _append_event(self, pipe: redis.client.Pipeline, record: JobRecord) -> None:
        data = {"status": record.status.value, "at": record.updated_at.isoformat()}
        if record.error is not None:
            data["error"] = record.error.model_dump_json()
        pipe.xadd(self.events_key(record.id), {"type": "status", "data": json.dumps(data)})
        pipe.expire(self.events_key(record.id), MAX_OPEN_SECONDS + record.retention_seconds)


CANCELED = TesseraError(ErrorCode.canceled_by_user, "The job was canceled at your request.")
# Jobs scanned at most to fill one page of a filtered listing.
LIST_SCAN_LIMIT = 1000


def _expired(record: JobRecord) -> TesseraError:
    return TesseraError(ErrorCode.deadline_exceeded,
                        f"The job did not start before its deadline ({record.deadline_at}); "
                        "submit it again with a longer queue_ttl_seconds or when the queue is "
                        "shorter.")


def _expire_if_queued(record: JobRecord) -> JobRecord | None:
    if record.status is not JobStatus.queued:
        return None
    return _ended(record, JobStatus.expired, _expired(record), "ingest")


def _failed(record: JobRecord, error: TesseraError, stage: Stage) -> JobRecord:
    return _ended(record, JobStatus.failed, error, stage)


def _ended(record: JobRecord, status: JobStatus, error: TesseraError, stage: Stage) -> JobRecord:
    record.status = status
    record.error = JobError(code=error.code, message=error.message, retryable=error.retryable,
                            stage=stage)
    record.times.finished_at = utcnow()
    return record
