"""The job store's transitions against a real Redis."""

import time
import uuid
from datetime import timedelta

import pytest

from shared.errors import ErrorCode, TesseraError
from shared.job_store import JobStore, StageRun, StaleRun, utcnow
from shared.schemas import JobStatus, Progress, StageTimes
from tests.factories import job_record


def _new_job(jobs: JobStore, **fields: object) -> str:
    record = job_record(**fields)
    jobs.create(record)
    return record.id


def _claimed(jobs: JobStore, job_id: str, stage: str = "inference") -> StageRun:
    record = jobs.claim(job_id, stage, max_attempts=3, worker="w/1").record  # type: ignore[arg-type]
    return StageRun(job_id, stage, record.attempts[stage])  # type: ignore[arg-type]


def test_claim_counts_attempts_and_fails_the_job_when_they_run_out(jobs: JobStore) -> None:
    job_id = _new_job(jobs)
    for attempt in (1, 2):
        claim = jobs.claim(job_id, "inference", max_attempts=2, worker="w/1")
        assert claim.changed or attempt > 1
        assert claim.record.attempts["inference"] == attempt
    exhausted = jobs.claim(job_id, "inference", max_attempts=2, worker="w/1")
    assert exhausted.record.status is JobStatus.failed and exhausted.changed
    assert exhausted.record.error is not None
    assert exhausted.record.error.code is ErrorCode.worker_lost


def test_a_job_ends_only_once(jobs: JobStore) -> None:
    job_id = _new_job(jobs)
    run = _claimed(jobs, job_id)
    assert jobs.succeed(run, "jobs/x/result-1.json").changed
    with pytest.raises(StaleRun):
        jobs.succeed(run, "jobs/x/result-1.json")
    assert not jobs.fail(job_id, TesseraError(ErrorCode.engine_error), "inference").changed
    assert jobs.get(job_id).status is JobStatus.succeeded
    statuses = [event["data"] for event in jobs.events(job_id)]
    assert len(statuses) == 3 and '"succeeded"' in statuses[-1]


def test_claim_of_an_ended_job_changes_nothing(jobs: JobStore) -> None:
    job_id = _new_job(jobs)
    jobs.fail(job_id, TesseraError(ErrorCode.decode_failed), "preprocess")
    claim = jobs.claim(job_id, "inference", max_attempts=3, worker="w/1")
    assert not claim.changed and claim.record.status is JobStatus.failed


def test_a_run_taken_over_has_every_write_refused(jobs: JobStore) -> None:
    job_id = _new_job(jobs)
    stale = _claimed(jobs, job_id)
    current = _claimed(jobs, job_id)  # its lease lapsed and another worker claimed the stage
    progress = Progress(stage="inference", done=1, total=8)
    for write in (lambda: jobs.set_progress(stale, progress),
                  lambda: jobs.append_output(stale, "stale text"),
                  lambda: jobs.check(stale),
                  lambda: jobs.succeed(stale, "jobs/x/result-1.json"),
                  lambda: jobs.fail(job_id, TesseraError(ErrorCode.engine_error), "inference",
                                    stale)):
        with pytest.raises(StaleRun):
            write()
    jobs.append_output(current, "current text")
    jobs.set_progress(current, progress)
    assert jobs.succeed(current, "jobs/x/result-2.json").changed
    record = jobs.get(job_id)
    assert record.status is JobStatus.succeeded and record.result_key == "jobs/x/result-2.json"
    outputs = [event["data"] for event in jobs.events(job_id) if event["type"] == "output"]
    assert outputs == ['{"delta": "current text"}']


def test_claim_records_the_stage_budget(jobs: JobStore) -> None:
    job_id = _new_job(jobs)
    before = utcnow()
    record = jobs.claim(job_id, "preprocess", max_attempts=3, worker="w/1",
                        budget_seconds=30).record
    assert record.stage_deadline_at is not None
    assert timedelta(seconds=29) < record.stage_deadline_at - before < timedelta(seconds=31)


def test_a_job_past_its_timeout_fails_with_deadline_exceeded(jobs: JobStore) -> None:
    # A prefix of its own: the stack's housekeeping must not time these jobs out first.
    jobs = JobStore(jobs.redis, f"{jobs.prefix}-timeouts-{uuid.uuid4().hex[:6]}")
    created = utcnow() - timedelta(seconds=4.5)
    waiting = _new_job(jobs, timeout_seconds=5, times=StageTimes(created_at=created))
    running = _new_job(jobs, timeout_seconds=5, times=StageTimes(created_at=created))
    _claimed(jobs, running)
    time.sleep(0.7)
    ended = {record.id for record in jobs.fail_timed_out(grace_seconds=3600)}
    assert waiting in ended and running not in ended  # a running job stops at a safe point
    record = jobs.get(waiting)
    assert record.status is JobStatus.failed and record.error is not None
    assert record.error.code is ErrorCode.deadline_exceeded and record.error.retryable
    # Past its timeout, a job is not started at all.
    late = _new_job(jobs, timeout_seconds=5, times=StageTimes(created_at=created))
    claim = jobs.claim(late, "preprocess", max_attempts=3, worker="w/1")
    assert claim.record.status is JobStatus.failed
    assert claim.record.error is not None and claim.record.error.code is ErrorCode.deadline_exceeded
