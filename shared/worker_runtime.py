"""What both kinds of worker share: clients built once per process and the stage protocol."""

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

from shared.celery_factory import create_celery_app
from shared.errors import ErrorCode, TesseraError
from shared.job_store import JobStore, WorkStage
from shared.object_store import ObjectStore
from shared.queues import WEBHOOK_QUEUE, WEBHOOK_TASK
from shared.schemas import EventType, JobRecord, JobStatus, WebhookTask
from shared.settings import BaseServiceSettings
from shared.tracing import setup_tracing, shutdown_tracing

log = logging.getLogger(__name__)

_EVENT_TYPES: dict[JobStatus, EventType] = {
    JobStatus.succeeded: "job.succeeded",
    JobStatus.failed: "job.failed",
    JobStatus.canceled: "job.canceled",
    JobStatus.expired: "job.expired",
}


@dataclass(frozen=True)
class WorkerClients:
    """Connections a worker process opens once (in worker_process_init) and reuses."""

    settings: BaseServiceSettings
    objects: ObjectStore
    jobs: JobStore
    celery: Celery

    @classmethod
    def connect(cls, settings: BaseServiceSettings, celery: Celery) -> "WorkerClients":
        """Open the object store and job store for this process."""
        return cls(settings, ObjectStore(settings),
                   JobStore.from_url(settings.REDIS_URL, settings.KEY_PREFIX), celery)

    def notify_if_terminal(self, record: JobRecord) -> None:
        """Queue the terminal webhook of an ended job (delivery drops duplicates by event id)."""
        if record.webhook_url is None or record.status not in _EVENT_TYPES:
            return
        task = WebhookTask(job_id=record.id, event_type=_EVENT_TYPES[record.status])
        self.celery.send_task(WEBHOOK_TASK, kwargs=task.model_dump(), queue=WEBHOOK_QUEUE)


def run_stage(clients: WorkerClients, job_id: str, stage: WorkStage,
              work: Callable[[JobRecord], JobRecord | None]) -> None:
    """Claim the stage, run work, and turn any failure into a failed job with a code.

    work returns the record when it ended the job itself (so its webhook is sent), else None.
    A job that is already over (a redelivered message) only has its webhook re-queued, since
    the process that ended it may have died before queuing it.
    """
    claim = clients.jobs.claim(job_id, stage, max_attempts=clients.settings.MAX_ATTEMPTS,
                               worker=f"{socket.gethostname()}/{os.getpid()}")
    if claim.record.status.terminal:
        clients.notify_if_terminal(claim.record)
        return
    try:
        ended = work(claim.record)
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
    """This worker process's clients (built by worker_process_init)."""
    if _clients is None:
        raise RuntimeError("worker clients are built in worker_process_init; is this a worker?")
    return _clients


def create_worker_app(name: str, settings: BaseServiceSettings, *, queue: str, tasks_module: str,
                      on_process_init: Callable[[], None] | None = None) -> Celery:
    """A worker's Celery app: tracing and clients set up in each pool process, spans flushed."""
    app = create_celery_app(name, settings)
    app.conf.task_default_queue = queue
    app.conf.imports = [tasks_module]

    @worker_process_init.connect(weak=False)
    def _init_process(**_: object) -> None:
        # Per pool process: connections and tracer state must not be shared across fork.
        global _clients
        setup_tracing(settings.OTEL_SERVICE_NAME, settings)
        _clients = WorkerClients.connect(settings, app)
        if on_process_init is not None:
            on_process_init()

    @worker_process_shutdown.connect(weak=False)
    def _shutdown_process(**_: object) -> None:
        shutdown_tracing()

    return app
