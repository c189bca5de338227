"""The stage protocol against a real Redis and S3: outages are retried, stale runs fenced off,
stages bounded in time, hung ones let go. The stages here are the tests' own work functions."""

import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import kombu
import pytest
import redis
from minio.error import S3Error

from shared.celery_factory import ResilientRedisTransport, create_celery_app
from shared.dispatch import send_stage
from shared.errors import ErrorCode, JobCanceled, TesseraError
from shared.job_store import JobStore, StageRun, utcnow
from shared.queues import inference_queue
from shared.schemas import JobRecord, JobStatus, Progress, StageTimes
from shared.settings import BaseServiceSettings
from shared.worker_runtime import ActiveRun, WorkerClients, run_stage
from tests.factories import job_record

QUEUE = "stage-runs-test"


@pytest.fixture
def clients(settings: BaseServiceSettings) -> WorkerClients:
    """Worker clients of a test process, with a short retry window and its own key prefix."""
    local = settings.model_copy(update={
        "KEY_PREFIX": f"{settings.KEY_PREFIX}-runs-{uuid.uuid4().hex[:6]}",
        "STAGE_RETRY_SECONDS": 3.0, "LEASE_SECONDS": 1.0, "STAGE_STALL_SECONDS": 1.0})
    clients = WorkerClients.connect(local, create_celery_app("stage-runs-test", local))
    # As in a worker process: a thread tells the runs when they must stop.
    threading.Thread(target=clients.watch_runs, daemon=True).start()
    return clients


def _job(clients: WorkerClients, **fields: object) -> JobRecord:
    record = job_record(**fields)
    clients.jobs.create(record)
    return record


def _error_code(jobs: JobStore, job_id: str) -> ErrorCode | None:
    error = jobs.get(job_id).error
    return None if error is None else error.code


def test_a_passing_redis_outage_inside_a_stage_is_retried_not_failed(
        clients: WorkerClients) -> None:
    record = _job(clients)
    calls = []

    def work(job: JobRecord, active: ActiveRun) -> JobRecord:
        calls.append(active.run)
        if len(calls) == 1:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379")
        assert active.run is not None
        return clients.jobs.succeed(active.run, "jobs/x/result-1.json").record

    run_stage(clients, record.id, QUEUE, "inference", work)
    job = clients.jobs.get(record.id)
    assert job.status is JobStatus.succeeded, job.error
    # Retried in place: the same run, one attempt.
    assert len(calls) == 2 and calls[0] == calls[1] and job.attempts["inference"] == 1


def test_an_s3_slowdown_is_retried_and_a_job_error_is_not(clients: WorkerClients) -> None:
    slow, broken = _job(clients), _job(clients)
    slowed: list[int] = []

    def throttled(job: JobRecord, active: ActiveRun) -> None:
        if not slowed:
            slowed.append(1)
            raise _s3_error("SlowDown", 503)
        raise TesseraError(ErrorCode.decode_failed)

    run_stage(clients, slow.id, QUEUE, "preprocess", throttled)
    run_stage(clients, broken.id, QUEUE, "preprocess",
              lambda job, active: (_ for _ in ()).throw(ValueError("a bug")))
    assert _error_code(clients.jobs, slow.id) is ErrorCode.decode_failed and slowed
    assert _error_code(clients.jobs, broken.id) is ErrorCode.internal_error


def test_an_outage_longer_than_the_retry_window_gives_the_attempt_back(
        clients: WorkerClients) -> None:
    record = _job(clients)

    def down(job: JobRecord, active: ActiveRun) -> None:
        raise redis.TimeoutError("Timeout reading from socket")

    started = time.monotonic()
    run_stage(clients, record.id, QUEUE, "preprocess", down)
    assert 2 < time.monotonic() - started < 10
    job = clients.jobs.get(record.id)
    # Not failed: its lease lapses and housekeeping re-queues the stage for another attempt.
    assert job.status is JobStatus.preprocessing and job.error is None
    time.sleep(clients.settings.LEASE_SECONDS + 0.2)
    assert clients.leases.take_lapsed() == [f"{record.id}:preprocess"]


def test_a_run_taken_over_while_frozen_stops_and_writes_nothing(clients: WorkerClients) -> None:
    record = _job(clients)
    woke = threading.Event()
    refused = []

    def frozen(job: JobRecord, active: ActiveRun) -> JobRecord:
        assert active.run is not None
        # Meanwhile its lease lapsed and another worker claimed the stage and finished it.
        current = clients.jobs.claim(job.id, "inference", max_attempts=3, worker="w/2").record
        clients.jobs.succeed(StageRun(job.id, "inference", current.attempts["inference"]),
                             "jobs/x/result-2.json")
        woke.set()
        clients.report_progress(active, job, Progress(stage="inference", done=1, total=2))
        refused.append(active.should_stop() and active.stop_reason)
        return clients.jobs.succeed(active.run, "jobs/x/result-1.json").record

    run_stage(clients, record.id, QUEUE, "inference", frozen)
    assert woke.is_set() and refused == ["stale"]
    job = clients.jobs.get(record.id)
    assert job.status is JobStatus.succeeded and job.result_key == "jobs/x/result-2.json"
    assert clients.jobs.progress(record.id) is None


def test_a_stage_past_its_budget_fails_with_stage_timeout(clients: WorkerClients) -> None:
    clients.settings = clients.settings.model_copy(update={"PREPROCESS_TIMEOUT_SECONDS": 0.5})
    record = _job(clients)

    def slow(job: JobRecord, active: ActiveRun) -> None:
        while not active.should_stop():  # a safe point at every step
            time.sleep(0.05)
        raise JobCanceled

    run_stage(clients, record.id, QUEUE, "preprocess", slow)
    job = clients.jobs.get(record.id)
    assert job.error is not None and job.error.code is ErrorCode.stage_timeout
    assert job.error.retryable and job.error.stage == "preprocess"


def test_a_job_past_its_timeout_stops_at_the_next_safe_point(clients: WorkerClients) -> None:
    record = _job(clients, timeout_seconds=2,
                  times=StageTimes(created_at=utcnow() - timedelta(seconds=1)))
    steps = []

    def generating(job: JobRecord, active: ActiveRun) -> None:
        while not active.should_stop():
            steps.append(1)
            time.sleep(0.05)
        raise JobCanceled

    run_stage(clients, record.id, QUEUE, "inference", generating)
    job = clients.jobs.get(record.id)
    assert steps and job.status is JobStatus.failed and job.error is not None
    assert job.error.code is ErrorCode.deadline_exceeded


def test_a_stalled_run_loses_its_lease_and_its_process_stops_beating(
        clients: WorkerClients) -> None:
    record = _job(clients)
    tended: list[bool] = []
    lapsed: list[list[str]] = []

    def stalled(job: JobRecord, active: ActiveRun) -> None:
        active.beat_at -= 5  # no progress for longer than STAGE_STALL_SECONDS
        tended.append(clients._tend_runs())
        time.sleep(clients.settings.LEASE_SECONDS + 0.2)
        lapsed.append(clients.leases.take_lapsed())
        raise TesseraError(ErrorCode.decode_failed)

    run_stage(clients, record.id, QUEUE, "preprocess", stalled)
    assert tended == [False] and lapsed == [[f"{record.id}:preprocess"]]


def _s3_error(code: str, status: int) -> S3Error:
    class Response:
        def __init__(self) -> None:
            self.status = status

    return S3Error(Response(), code, "try later", "/b/k", "r", "h")  # type: ignore[arg-type]


def test_a_task_taken_but_never_started_is_sent_again_without_waiting_an_hour(
        clients: WorkerClients) -> None:
    # Prepared and waiting for a model nobody serves here, so only this test reads its queue.
    record = _job(clients, model=f"unserved-{uuid.uuid4().hex[:6]}",
                  status=JobStatus.preprocessing,
                  times=StageTimes(created_at=utcnow(), preprocess_finished_at=utcnow()))
    queue = inference_queue(record.model)
    send_stage(clients.celery, record, "inference")
    # A worker takes the task (kombu records it as unacknowledged) and dies before starting it.
    api: Any = kombu
    connection = api.Connection(clients.settings.REDIS_URL,
                                transport=ResilientRedisTransport)
    taken: list[Any] = []
    consumer = connection.Consumer(api.Queue(queue), accept=["json"],
                                   callbacks=[lambda _, message: taken.append(message)])
    consumer.qos(prefetch_count=1)
    consumer.consume()
    connection.drain_events(timeout=5)
    assert len(taken) == 1 and clients.jobs.redis.llen(queue) == 0
    try:
        clients._resend_unstarted(period=0.01)
        assert clients.jobs.redis.llen(queue) == 0  # not yet: it may just be starting
        time.sleep(2 * clients.settings.LEASE_SECONDS + 0.2)
        clients._resend_unstarted(period=0.01)
        assert clients.jobs.redis.llen(queue) == 1
        time.sleep(0.05)
        clients._resend_unstarted(period=0.01)
        assert clients.jobs.redis.llen(queue) == 1  # each task is sent again once
    finally:
        taken[0].ack()
        clients.jobs.redis.delete(queue)
