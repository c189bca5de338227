"""The job store: the one owner of job state, in Redis, with atomic lifecycle transitions."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
class StageRun:
    """One run of a job's stage. The attempt number its claim got is its fencing token: every
    write the run makes is refused once another run claimed the stage or the job ended."""

    job_id: str
    stage: WorkStage
    attempt: int


class StaleRun(Exception):
    """A run wrote after it stopped holding its stage (another run took it over, or the job
    ended without it); the write was refused and the run must stop."""

    def __init__(self, run: StageRun) -> None:
        super().__init__(f"job {run.job_id}: run {run.attempt} of its {run.stage} stage no "
                         "longer holds the stage")
        self.run = run


def holds(record: JobRecord, run: StageRun) -> bool:
    """True while run is the current run of its stage and the job is in that stage."""
    if record.attempts.get(run.stage) != run.attempt:
        return False
    if record.status is JobStatus.canceling:
        return running_stage(record) == run.stage
    return record.status is _RUNNING_STATUS[run.stage]


def waiting_for(record: JobRecord, stage: WorkStage) -> bool:
    """True while the job waits for stage to start (queued, or prepared for inference)."""
    if stage == "preprocess":
        return record.status is JobStatus.queued
    return (record.status is JobStatus.preprocessing
            and record.times.preprocess_finished_at is not None)


def running_stage(record: JobRecord) -> WorkStage:
    """The stage a started job is in (or was in when it was asked to stop)."""
    return "inference" if record.times.inference_started_at is not None else "preprocess"


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
            if record.run_deadline_at is not None:
                pipe.zadd(self._timeouts, {record.id: record.run_deadline_at.timestamp()})
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

    def get_many(self, job_ids: list[str]) -> dict[str, JobRecord]:
        """The stored jobs among job_ids (in one read), by id; missing ones are left out."""
        if not job_ids:
            return {}
        raws = cast(list[str | None], self.redis.mget([self._key(job_id) for job_id in job_ids]))
        return {job_id: JobRecord.model_validate_json(raw)
                for job_id, raw in zip(job_ids, raws, strict=True) if raw is not None}

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

    def set_progress(self, run: StageRun, progress: Progress) -> None:
        """Remember how far a running job is (read by GET /v1/jobs/{id}); StaleRun if run no
        longer holds its stage."""
        self._fenced_write(run, lambda pipe: pipe.set(
            f"{self.prefix}:job:{run.job_id}:progress", progress.model_dump_json(),
            ex=MAX_OPEN_SECONDS))

    def progress(self, job_id: str) -> Progress | None:
        """How far a running job is, if its worker said."""
        raw = cast(str | None, self.redis.get(f"{self.prefix}:job:{job_id}:progress"))
        return None if raw is None else Progress.model_validate_json(raw)

    def append_output(self, run: StageRun, delta: str) -> None:
        """Record a piece of a running job's answer as an "output" event; StaleRun if run no
        longer holds its stage."""
        self._fenced_write(run, lambda pipe: pipe.xadd(
            self.events_key(run.job_id), {"type": "output", "data": json.dumps({"delta": delta})}))

    def check(self, run: StageRun) -> JobRecord:
        """The job while run still holds its stage; StaleRun otherwise (before a write to S3)."""
        record = self.get(run.job_id)
        if not holds(record, run):
            raise StaleRun(run)
        return record

    def claim(self, job_id: str, stage: WorkStage, *, max_attempts: int, worker: str,
              budget_seconds: float | None = None) -> Transition:
        """Start (or restart) a stage in worker, with budget_seconds to finish it; ends the job
        instead when it was canceled, its deadline or timeout passed, or the stage used up its
        attempts. The claimed record's attempts[stage] is the run's fencing token."""
        current = self.get(job_id)
        if stage == "preprocess" and current.times.preprocess_finished_at is not None:
            # An aged batch job's promoted copy already ran this stage (never unset again).
            return Transition(current, changed=False, superseded=True)

        def start(record: JobRecord) -> JobRecord | None:
            if record.status.terminal:
                return None
            if record.status is JobStatus.canceling:
                return _ended(record, JobStatus.canceled, CANCELED, stage)
            now = utcnow()
            if (record.status is JobStatus.queued and record.deadline_at is not None
                    and record.deadline_at < now):
                return _ended(record, JobStatus.expired, _expired(record), stage)
            if record.run_deadline_at is not None and record.run_deadline_at < now:
                return _failed(record, timed_out(record), stage)
            attempts = record.attempts.get(stage, 0)
            if attempts >= max_attempts:
                return _failed(record, TesseraError(
                    ErrorCode.worker_lost,
                    f"The {stage} stage was interrupted {attempts} times (its worker process "
                    "died, or Redis or S3 kept failing); the job was stopped to protect the "
                    "service. Retry it, or send smaller media if it keeps failing."), stage)
            record.attempts = {**record.attempts, stage: attempts + 1}
            record.status = _RUNNING_STATUS[stage]
            record.worker = worker
            record.stage_deadline_at = (now + timedelta(seconds=budget_seconds)
                                        if budget_seconds is not None else None)
            if stage == "preprocess":
                record.times.preprocess_started_at = now
            else:
                record.times.inference_started_at = now
            return record

        return self._update(job_id, start)

    def finish_preprocess(self, run: StageRun) -> Transition:
        """Record that inputs are prepared; the job waits for an inference worker next."""

        def finish(record: JobRecord) -> JobRecord:
            record.times.preprocess_finished_at = utcnow()
            record.stage_deadline_at = None
            return record

        return self._update_run(run, finish)

    def succeed(self, run: StageRun, result_key: str) -> Transition:
        """Mark the job succeeded with its result; StaleRun if run no longer holds the stage."""

        def succeed(record: JobRecord) -> JobRecord:
            record.status = JobStatus.succeeded
            record.result_key = result_key
            record.times.finished_at = utcnow()
            return record

        return self._update_run(run, succeed)

    def fail(self, job_id: str, error: TesseraError, stage: Stage,
             run: StageRun | None = None) -> Transition:
        """Mark the job failed with a coded error, unless it already ended; given the run
        that failed it, only while that run holds its stage (StaleRun otherwise)."""
        if run is not None:
            return self._update_run(run, lambda record: _failed(record, error, stage))

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

    def finish_canceled(self, run: StageRun) -> Transition:
        """End a job whose run stopped because its owner asked it to."""
        return self._update_run(run, lambda record: _ended(record, JobStatus.canceled, CANCELED,
                                                           run.stage))

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
            if waiting_for(record, cast(WorkStage, stage)):
                aged.append((record, cast(WorkStage, stage)))
        return aged

    def expire_overdue(self, limit: int = 100) -> list[JobRecord]:
        """End queued jobs whose deadline passed (whoever removes an entry handles it)."""
        overdue = cast(list[str], self.redis.zrangebyscore(
            f"{self.prefix}:deadlines", 0, utcnow().timestamp(), start=0, num=limit))
        ended = []
        for job_id in overdue:
            # The transition is atomic and idempotent: whoever changes the job handles it, and
            # the entry goes only after that, so a sweeper dying halfway loses nothing.
            try:
                transition = self._update(job_id, _expire_if_queued)
            except JobNotFound:
                transition = None
            self.redis.zrem(f"{self.prefix}:deadlines", job_id)
            if transition is not None and transition.changed:
                ended.append(transition.record)
        return ended

    def fail_timed_out(self, *, grace_seconds: float, limit: int = 100) -> list[JobRecord]:
        """Fail jobs past their timeout_seconds that no run is stopping: waiting ones at once,
        running ones once their run has had grace_seconds to stop at a safe point."""
        now = utcnow().timestamp()
        due = cast(list[str], self.redis.zrangebyscore(self._timeouts, 0, now, start=0,
                                                       num=limit))
        ended = []
        for job_id in due:
            try:
                record = self.get(job_id)
            except JobNotFound:
                self.redis.zrem(self._timeouts, job_id)
                continue
            if record.status.terminal:
                self.redis.zrem(self._timeouts, job_id)
                continue
            running = record.status in (JobStatus.inferring, JobStatus.canceling) or (
                record.status is JobStatus.preprocessing
                and record.times.preprocess_finished_at is None)
            deadline = cast(datetime, record.run_deadline_at).timestamp()
            if running and now < deadline + grace_seconds:
                # Its run stops itself at the next safe point; look again after the grace.
                self.redis.zadd(self._timeouts, {job_id: deadline + grace_seconds})
                continue
            stage: Stage = running_stage(record) if running else (
                "inference" if record.status is JobStatus.preprocessing else "ingest")
            # Failing is atomic and idempotent; the entry goes with the job's end (retention).
            try:
                transition = self.fail(job_id, timed_out(record), stage)
            except JobNotFound:
                self.redis.zrem(self._timeouts, job_id)
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

    @property
    def _timeouts(self) -> str:
        return f"{self.prefix}:timeouts"

    def _update_run(self, run: StageRun, mutate: Callable[[JobRecord], JobRecord]) -> Transition:
        """_update, applied only while run holds its stage (StaleRun otherwise)."""

        def fenced(record: JobRecord) -> JobRecord:
            if not holds(record, run):
                raise StaleRun(run)
            return mutate(record)

        return self._update(run.job_id, fenced)

    def _fenced_write(self, run: StageRun, write: Callable[[redis.client.Pipeline], object],
                      ) -> None:
        """Queue write in a transaction that runs only while run holds its stage: the job
        record is watched, so a takeover between the check and the write aborts it."""
        key = self._key(run.job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        raise JobNotFound(run.job_id)
                    if not holds(JobRecord.model_validate_json(raw), run):
                        raise StaleRun(run)
                    pipe.multi()
                    write(pipe)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

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
        pipe.zrem(self._timeouts, record.id)
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


def timed_out(record: JobRecord) -> TesseraError:
    """The error of a job that ran past its timeout_seconds."""
    return TesseraError(ErrorCode.deadline_exceeded,
                        f"The job did not finish within its timeout of {record.timeout_seconds} "
                        "s; submit it again with a longer timeout_seconds (or Cancel-After).")


def stage_timed_out(stage: WorkStage) -> TesseraError:
    """The error of a job whose stage ran past its time budget."""
    return TesseraError(ErrorCode.stage_timeout,
                        f"The {stage} stage ran past its time budget (a stuck worker, or media "
                        "or an answer too large to finish in time); retry the job, with smaller "
                        "media or fewer max_new_tokens if it happens again.")


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
