"""What every worker shares: clients built once per process, stage leases, the stage protocol."""

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from celery import Celery
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from shared.celery_factory import create_celery_app
from shared.dispatch import queue_stage, send_stage
from shared.errors import ErrorCode, JobCanceled, TesseraError
from shared.job_store import JobNotFound, JobStore, WorkStage
from shared.leases import LeaseBook, new_holder, this_worker
from shared.object_store import JobKeys, ObjectStore
from shared.queue_position import record_start
from shared.queues import CELERY_PRIORITY
from shared.schemas import JobRecord, JobStatus, Progress
from shared.settings import BaseServiceSettings
from shared.tracing import setup_tracing, shutdown_tracing
from shared.webhook_events import TERMINAL_EVENTS, WebhookEventType, queue_event

log = logging.getLogger(__name__)


@dataclass
class WorkerClients:
    """Connections a worker process opens once and reuses, and the leases it holds."""

    settings: BaseServiceSettings
    objects: ObjectStore
    jobs: JobStore
    leases: LeaseBook
    celery: Celery
    held: set[str] = field(default_factory=set)
    held_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def connect(cls, settings: BaseServiceSettings, celery: Celery) -> "WorkerClients":
        """Open the object store and job store for this process."""
        jobs = JobStore.from_url(settings.REDIS_URL, settings.KEY_PREFIX)
        return cls(settings, ObjectStore(settings), jobs,
                   LeaseBook(jobs.redis, settings.KEY_PREFIX, settings.LEASE_SECONDS), celery)

    def notify_if_terminal(self, record: JobRecord) -> None:
        """Queue the terminal webhook of an ended job (delivery drops duplicates by event id)."""
        if record.status in TERMINAL_EVENTS:
            self._queue_event(record, TERMINAL_EVENTS[record.status], {})

    def notify(self, record: JobRecord, event_type: WebhookEventType,
               data: dict[str, object]) -> None:
        """Queue a started, progress or output webhook if the job asked for it; never raises."""
        try:
            self._queue_event(record, event_type, data)
        except Exception:  # best effort: a lost progress event must not fail the job's work
            log.exception("job %s: could not queue its %s webhook", record.id, event_type)

    def report_progress(self, record: JobRecord, progress: Progress) -> None:
        """Record how far the job is and send its progress webhook if it asked; never raises."""
        try:
            self.jobs.set_progress(record.id, progress)
        except Exception:  # best effort, like the webhook below
            log.exception("job %s: could not record its progress", record.id)
        self.notify(record, "job.progress", progress.model_dump())

    def _queue_event(self, record: JobRecord, event_type: WebhookEventType,
                     data: dict[str, object]) -> None:
        queue_event(self.celery, self.jobs.redis, self.settings.KEY_PREFIX, record, event_type,
                    data)

    def _requeue(self, lease: str) -> None:
        """Send a stage whose holder went silent again, at its job's priority."""
        job_id, _, stage = lease.rpartition(":")
        try:
            record = self.jobs.get(job_id)
        except JobNotFound:
            return
        if not record.status.terminal:
            log.warning("re-queuing the %s of job %s: its worker stopped renewing the lease",
                        stage, job_id)
            send_stage(self.celery, record, cast(WorkStage, stage))

    def keep_house(self) -> None:
        """Forever: renew this process's leases, re-queue stages whose holder went silent,
        expire queued jobs past their deadline and purge jobs whose retention ended.

        Every worker process runs this; each item is claimed atomically, so any one of them
        handles it once, and a deployment scaled to zero GPUs still expires and purges jobs.
        """
        period = self.settings.LEASE_SECONDS / 3
        while True:
            try:
                with self.held_lock:
                    held = list(self.held)
                self.leases.renew(held)
                for lease in self.leases.take_lapsed():
                    self._requeue(lease)
                for record in self.jobs.expire_overdue():
                    self.notify_if_terminal(record)
                for record, stage in self.jobs.take_aged():
                    # The low-priority message stays queued; whichever copy comes first runs.
                    log.info("promoting batch job %s (%s) after waiting", record.id, stage)
                    send_stage(self.celery, record, stage, priority=CELERY_PRIORITY["interactive"])
                for record in self.jobs.take_expired_retention():
                    self.objects.delete_prefix(JobKeys(record.id).prefix)
            except Exception:  # a Redis hiccup must not end the heartbeat
                log.exception("housekeeping failed; retrying")
            threading.Event().wait(period)


def run_stage(clients: WorkerClients, job_id: str, queue: str, stage: WorkStage,
              work: Callable[[JobRecord], JobRecord | None]) -> None:
    """Lease and claim the stage, run work, and turn any failure into a failed job with a code.

    work returns the record when it ended the job itself (so its webhook is sent), else None.
    A job that is already over (a redelivered message) only has its webhook re-queued, since
    the process that ended it may have died before queuing it.
    """
    worker, holder = this_worker(), new_holder()
    # One lease per stage: the preprocess stage still holds its own while it queues inference.
    lease = f"{job_id}:{stage}"
    running_in = clients.leases.acquire(lease, holder)
    if running_in is not None:
        log.info("job %s: %s is already running in %s; dropping this copy", job_id, stage,
                 running_in)
        return
    with clients.held_lock:
        clients.held.add(lease)
    # Running acks-late tasks are invisible in the queue's list; autoscalers (KEDA) add this
    # list to it so a busy worker is never scaled away. A copy left by a killed worker is
    # removed when the stage's next run ends (LREM drops every copy).
    inflight = inflight_key(queue)
    try:
        clients.jobs.redis.rpush(inflight, lease)
        record_start(clients.jobs.redis, queue)
        _run_claimed(clients, job_id, stage, worker, work)
    except Exception:
        # Redis or S3 failed outside the job's own work: keep the lease, which lapses once the
        # heartbeat stops, so housekeeping re-queues the stage within LEASE_SECONDS.
        log.exception("job %s: %s interrupted by an infrastructure error", job_id, stage)
        with clients.held_lock:
            clients.held.discard(lease)
        raise
    with clients.held_lock:
        clients.held.discard(lease)
    clients.jobs.redis.lrem(inflight, 0, lease)
    clients.leases.release(lease, holder)


def inflight_key(queue: str) -> str:
    """The Redis list of stages running from a queue (the queue's own list holds waiting ones)."""
    return f"{queue}:inflight"


def _run_claimed(clients: WorkerClients, job_id: str, stage: WorkStage, worker: str,
                 work: Callable[[JobRecord], JobRecord | None]) -> None:
    try:
        claim = clients.jobs.claim(job_id, stage, max_attempts=clients.settings.MAX_ATTEMPTS,
                                   worker=worker)
    except JobNotFound:
        log.warning("job %s no longer exists (retention expired?); dropping its %s task",
                    job_id, stage)
        return
    if claim.superseded:
        if claim.record.status is JobStatus.preprocessing:
            # Its worker may have died between recording the stage done and queuing the next.
            queue_stage(clients.celery, clients.jobs, claim.record, "inference")
        log.info("job %s: %s was already done; dropping this copy", job_id, stage)
        return
    if claim.record.status.terminal:
        clients.notify_if_terminal(claim.record)
        return
    try:
        ended = work(claim.record)
    except JobCanceled:
        log.info("job %s canceled during %s", job_id, stage)
        ended = clients.jobs.finish_canceled(job_id, stage).record
    except TesseraError as error:
        log.info("job %s failed in %s: %s", job_id, stage, error)
        ended = clients.jobs.fail(job_id, error, stage).record
    except Exception as error:  # a bug must end the job, not leave it stuck
        log.exception("job %s crashed in %s", job_id, stage)
        ended = clients.jobs.fail(job_id, TesseraError(
            ErrorCode.internal_error, f"Unexpected {type(error).__name__} in the {stage} stage; "
            "the team has the logs. Retry the job later."), stage).record
    if ended is not None:
        clients.notify_if_terminal(ended)


_clients: WorkerClients | None = None


def process_clients() -> WorkerClients:
    """This worker process's clients (built when the process started)."""
    if _clients is None:
        raise RuntimeError("worker clients are built at worker start; is this a worker?")
    return _clients


def create_worker_app(name: str, settings: BaseServiceSettings, *, queue: str, tasks_module: str,
                      on_process_init: Callable[[], None] | None = None) -> Celery:
    """A worker's Celery app: tracing, clients and the lease heartbeat set up in each process
    that runs tasks (each prefork child, or the worker itself for thread pools)."""
    app = create_celery_app(name, settings)
    app.conf.task_default_queue = queue
    app.conf.imports = [tasks_module]

    def init_process() -> None:
        # Connections and tracer state must not be shared across fork.
        global _clients
        setup_tracing(settings.OTEL_SERVICE_NAME, settings)
        _clients = WorkerClients.connect(settings, app)
        threading.Thread(target=_clients.keep_house, name="housekeeping", daemon=True).start()
        if on_process_init is not None:
            on_process_init()

    @worker_process_init.connect(weak=False)
    def _init_child(**_: object) -> None:
        init_process()

    @worker_process_shutdown.connect(weak=False)
    def _shutdown_child(**_: object) -> None:
        shutdown_tracing()

    @worker_init.connect(weak=False)
    def _init_main(sender: Any = None, **_: object) -> None:
        if not _runs_prefork(sender):
            init_process()

    @worker_shutdown.connect(weak=False)
    def _shutdown_main(sender: Any = None, **_: object) -> None:
        if not _runs_prefork(sender):
            shutdown_tracing()

    return app


def _runs_prefork(worker: Any) -> bool:
    """True when tasks run in forked children rather than in the worker process itself."""
    pool = getattr(worker, "pool_cls", None)
    return isinstance(pool, type) and issubclass(pool, PreforkPool)
