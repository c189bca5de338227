"""The job store's transitions against a real Redis."""

from shared.errors import ErrorCode, TesseraError
from shared.job_store import JobStore
from shared.schemas import JobStatus
from tests.factories import job_record


def _new_job(jobs: JobStore) -> str:
    record = job_record()
    jobs.create(record)
    return record.id


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
    assert jobs.succeed(job_id, "jobs/x/result.json").changed
    assert not jobs.succeed(job_id, "jobs/x/result.json").changed
    assert not jobs.fail(job_id, TesseraError(ErrorCode.engine_error), "inference").changed
    assert jobs.get(job_id).status is JobStatus.succeeded
    statuses = [event["data"] for event in jobs.events(job_id)]
    assert len(statuses) == 2 and '"succeeded"' in statuses[-1]


def test_claim_of_an_ended_job_changes_nothing(jobs: JobStore) -> None:
    job_id = _new_job(jobs)
    jobs.fail(job_id, TesseraError(ErrorCode.decode_failed), "preprocess")
    claim = jobs.claim(job_id, "inference", max_attempts=3, worker="w/1")
    assert not claim.changed and claim.record.status is JobStatus.failed
