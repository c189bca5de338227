"""What every worker shares: clients built once per process, stage runs (leases, fencing,
budgets, progress), housekeeping, and the stage protocol."""

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Literal, TypeVar, cast

from celery import Celery
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from shared.celery_factory import create_celery_app
from shared.dispatch import queue_stage, send_stage
from shared.errors import ErrorCode, JobCanceled, TesseraError
from shared.job_store import (
    JobNotFound,
    JobStore,
    StageRun,
    StaleRun,
    WorkStage,
    holds,
    stage_timed_out,
    timed_out,
    utcnow,
    waiting_for,
)
from shared.leases import LeaseBook, new_holder, this_worker
from shared.object_store import JobKeys, ObjectStore
from shared.process_health import PARENT_PID_ENV, die_with_parent, touch_heartbeat
from shared.queue_position import record_start
from shared.queues import CELERY_PRIORITY
from shared.schemas import JobRecord, JobStatus, Progress
from shared.settings import BaseServiceSettings
from shared.tracing import setup_tracing, shutdown_tracing
from shared.transient import is_transient
from shared.unacked_stages import unacked_stages
from shared.webhook_events import TERMINAL_EVENTS, WebhookEventType, queue_event

log = logging.getLogger(__name__)
T = TypeVar("T")

# Why a run stops before its work is done: its owner canceled the job, the job ran past its
# timeout_seconds, the stage past its time budget, or another run took the stage over.
StopReason = Literal["canceled", "deadline", "timeout", "stale"]
# How long a run past its budget has to stop at a safe point before housekeeping fails its job.
STOP_GRACE_SECONDS = 30.0
# How often each worker process asks Redis whether its runs must stop (one read for all).
STOP_CHECK_SECONDS = 0.5


@dataclass(eq=False)
class ActiveRun:
    """A stage running in this process: its lease and holder id, its fencing token (once
    claimed), when it last made progress, and why it must stop."""

    lease: str
    holder: str
    run: StageRun | None = None
    # When its time budget ends (from its claim).
    budget_ends_at: datetime | None = None
    beat_at: float = field(default_factory=time.monotonic)
    stop_reason: StopReason | None = None

    def beat(self) -> None:
        """Record that the work moved forward (an input prepared, a token decoded)."""
        self.beat_at = time.monotonic()

    def stop(self, reason: StopReason) -> None:
        """Ask the run to stop at its next safe point (the first reason sticks)."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def should_stop(self) -> bool:
        """Polled at safe points (between inputs, at each decoding step): counts as progress,
        and True once the run must stop (canceled, timed out, over budget or taken over).
        It never waits on Redis: the process's stop watch sets the reason."""
        self.beat()
        return self.stop_reason is not None


def reason_to_stop(record: JobRecord | None, run: StageRun) -> StopReason | None:
    """Why run must stop, given its job as stored now (None: the job is gone)."""
    if record is None or not holds(record, run):
        return "stale"
    if record.status is JobStatus.canceling:
        return "canceled"
    now = utcnow()
    if record.run_deadline_at is not None and record.run_deadline_at < now:
        return "deadline"
    if record.stage_deadline_at is not None and record.stage_deadline_at < now:
        return "timeout"
    return None


@dataclass
class WorkerClients:
    """Connections a worker process opens once and reuses, and the runs it holds."""

    settings: BaseServiceSettings
    objects: ObjectStore
    jobs: JobStore
    leases: LeaseBook
    celery: Celery
    runs: dict[str, ActiveRun] = field(default_factory=dict)
    runs_lock: threading.Lock = field(default_factory=threading.Lock)

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

    def report_progress(self, active: ActiveRun, record: JobRecord, progress: Progress) -> None:
        """Record how far the run is and send its progress webhook if the job asked; never
        raises (a refused write makes the run stop at its next safe point)."""
        if self.fenced(active, lambda run: self.jobs.set_progress(run, progress)):
            self.notify(record, "job.progress", progress.model_dump())

    def fenced(self, active: ActiveRun, write: Callable[[StageRun], object]) -> bool:
        """Make a best-effort write of the run (progress, output); False when it was refused
        (the run is then stopped as stale) or Redis failed."""
        assert active.run is not None
        try:
            write(active.run)
        except StaleRun:
            active.stop("stale")
            return False
        except Exception:  # best effort, like the webhook above
            log.exception("job %s: could not record its progress", active.run.job_id)
            return False
        return True

    def _queue_event(self, record: JobRecord, event_type: WebhookEventType,
                     data: dict[str, object]) -> None:
        queue_event(self.celery, self.jobs.redis, self.settings.KEY_PREFIX, record, event_type,
                    data)

    def keep_alive(self) -> None:
        """Forever: renew the leases of runs that progress, let go of stalled ones, stop runs
        past their budget, and touch the heartbeat file while this process's work progresses.
        A thread of its own, so slow sweeps under load never delay a renewal."""
        period = self.settings.LEASE_SECONDS / 3
        while True:
            healthy = True
            try:
                healthy = self._tend_runs()
            except Exception as error:  # a Redis hiccup must not end the heartbeat
                _log_failure("lease renewal", error)
            # Liveness does not depend on Redis: only on this process's own work progressing.
            if healthy and self.settings.HEARTBEAT_FILE is not None:
                touch_heartbeat(self.settings.HEARTBEAT_FILE)
            threading.Event().wait(period)

    def keep_house(self) -> None:
        """Forever: re-queue stages whose holder went silent or whose task was never started,
        expire and time out jobs, promote aged batch jobs and purge jobs whose retention ended.

        Every worker process runs this; each item is claimed atomically, so any one of them
        handles it once, and a deployment scaled to zero GPUs still expires and purges jobs.
        """
        period = self.settings.LEASE_SECONDS / 3
        # After Redis was away, every lease looks lapsed; holders get one lease period to
        # renew before this process takes lapsed ones (or it would restart every live run).
        redis_back_at = time.monotonic()
        while True:
            try:
                if time.monotonic() - redis_back_at > self.settings.LEASE_SECONDS:
                    for lease in self.leases.take_lapsed():
                        self._requeue(lease)
                        self.leases.settle_taken(lease)
                    self._resend_unstarted(period)
                for record in self.jobs.expire_overdue():
                    self.notify_if_terminal(record)
                for record in self.jobs.fail_timed_out(grace_seconds=STOP_GRACE_SECONDS):
                    self.notify_if_terminal(record)
                for record, stage in self.jobs.take_aged():
                    # The low-priority message stays queued; whichever copy comes first runs.
                    log.info("promoting batch job %s (%s) after waiting", record.id, stage)
                    send_stage(self.celery, record, stage, priority=CELERY_PRIORITY["interactive"])
                for record in self.jobs.take_expired_retention():
                    self.objects.delete_prefix(JobKeys(record.id).prefix)
            except Exception as error:  # a Redis hiccup must not end housekeeping
                if is_transient(error):
                    redis_back_at = time.monotonic()
                _log_failure("housekeeping", error)
            threading.Event().wait(period)

    def watch_runs(self) -> None:
        """Forever: read the jobs of this process's runs (one MGET) and tell each run whether
        it must stop. A separate thread, so an engine step never waits on Redis."""
        while True:
            with self.runs_lock:
                runs = [active for active in self.runs.values()
                        if active.run is not None and active.stop_reason is None]
            try:
                records = self.jobs.get_many([cast(StageRun, a.run).job_id for a in runs])
            except Exception as error:  # Redis is away: keep working; the writes are fenced
                if not is_transient(error):
                    log.exception("could not check whether runs must stop")
                records = {}
            else:
                for active in runs:
                    run = cast(StageRun, active.run)
                    reason = reason_to_stop(records.get(run.job_id), run)
                    if reason is not None:
                        active.stop(reason)
            threading.Event().wait(STOP_CHECK_SECONDS)

    def _tend_runs(self) -> bool:
        """Renew the leases of runs that progress within budget; stop, fail or let go of the
        others. False when a run here is wedged (stalled, or not stopping past its budget)."""
        now, wall = time.monotonic(), utcnow()
        with self.runs_lock:
            runs = list(self.runs.values())
        renew, healthy = {}, True
        for active in runs:
            stalled = now - active.beat_at > self.settings.STAGE_STALL_SECONDS
            over_budget = (0.0 if active.budget_ends_at is None
                           else (wall - active.budget_ends_at).total_seconds())
            if over_budget > 0:
                active.stop("timeout")
            if stalled or over_budget > STOP_GRACE_SECONDS:
                healthy = False
                log.error("%s: no progress for %.0f s, %.0f s over budget; letting its lease go",
                          active.lease, now - active.beat_at, over_budget)
                if over_budget > STOP_GRACE_SECONDS:
                    self._fail_over_budget(active)
                continue
            renew[active.lease] = active.holder
        for lease in self.leases.renew(renew):
            log.warning("%s was taken over by another run; this one stops", lease)
            for active in runs:
                if active.lease == lease:
                    active.stop("stale")
        return healthy

    def _fail_over_budget(self, active: ActiveRun) -> None:
        assert active.run is not None
        try:
            ended = self.jobs.fail(active.run.job_id, stage_timed_out(active.run.stage),
                                   active.run.stage, active.run).record
        except StaleRun:
            return
        log.error("job %s failed: its %s stage did not stop past its budget", ended.id,
                  active.run.stage)
        self.notify_if_terminal(ended)

    def _resend_unstarted(self, period: float) -> None:
        """Send again the stages whose task some worker took from the broker but has not
        started for two lease periods (it died, or took more than it can run), instead of
        letting them wait for the visibility timeout. One process per round looks, and each
        task is sent again once; a copy that comes second is dropped by the lease and claim."""
        client, prefix = self.jobs.redis, self.settings.KEY_PREFIX
        if not client.set(f"{prefix}:unacked-sweep", this_worker(), nx=True,
                          px=int(period * 1000)):
            return
        for held in unacked_stages(client, older_than=2 * self.settings.LEASE_SECONDS):
            try:
                record = self.jobs.get(held.job_id)
            except JobNotFound:
                continue
            if (not waiting_for(record, held.stage)
                    or self.leases.live(f"{held.job_id}:{held.stage}")):
                continue
            if client.set(f"{prefix}:resent:{held.delivery_tag}", "1", nx=True,
                          ex=self.settings.VISIBILITY_TIMEOUT_SECONDS):
                log.warning("sending the %s of job %s again: its task was taken %.0f s ago "
                            "and never started", held.stage, held.job_id,
                            time.time() - held.taken_at)
                send_stage(self.celery, record, held.stage)

    def _requeue(self, lease: str) -> None:
        """Send a stage whose holder went silent again, at its job's priority; fail it instead
        when the silent run had used up its time budget."""
        job_id, _, stage_name = lease.rpartition(":")
        stage = cast(WorkStage, stage_name)
        try:
            record = self.jobs.get(job_id)
        except JobNotFound:
            return
        if record.status.terminal:
            return
        run = StageRun(job_id, stage, record.attempts.get(stage, 0))
        if (holds(record, run) and record.stage_deadline_at is not None
                and record.stage_deadline_at < utcnow()):
            try:
                self.notify_if_terminal(self.jobs.fail(job_id, stage_timed_out(stage), stage,
                                                       run).record)
                log.error("job %s failed: its %s stage went silent past its budget", job_id,
                          stage)
            except StaleRun:
                pass
            return
        log.warning("re-queuing the %s of job %s: its worker stopped renewing the lease",
                    stage, job_id)
        send_stage(self.celery, record, stage)


# What a stage does with its claimed job: returns the record when it ended the job itself (so
# its webhook is sent), else None. It checks `active.should_stop()` at its safe points.
StageWork = Callable[[JobRecord, ActiveRun], JobRecord | None]


class StageGaveUp(Exception):
    """Redis or S3 stayed away longer than STAGE_RETRY_SECONDS; the attempt is given back."""


def run_stage(clients: WorkerClients, job_id: str, queue: str, stage: WorkStage,
              work: StageWork) -> None:
    """Lease and claim the stage, run work, and turn any failure into a failed job with a code.

    A job that is already over (a redelivered message) only has its webhook re-queued, since
    the process that ended it may have died before queuing it. Passing Redis or S3 errors are
    retried in place; if they last, the stage is re-queued (never failed, never dropped).
    """
    active = ActiveRun(f"{job_id}:{stage}", new_holder())
    try:
        _run_leased(clients, active, queue, stage, work)
    except StageGaveUp as error:
        # Keep the lease if we got it: it lapses and housekeeping re-queues the stage. If not,
        # hand the message back to the broker rather than let Celery drop it.
        log.error("job %s: %s gave up: %s", job_id, stage, error.__cause__)
        if active.run is None:
            raise Reject(error, requeue=True) from error
    finally:
        with clients.runs_lock:
            clients.runs.pop(active.lease, None)


def _run_leased(clients: WorkerClients, active: ActiveRun, queue: str, stage: WorkStage,
                work: StageWork) -> None:
    running_in = _retrying(clients, active, "take its lease",
                           lambda: clients.leases.acquire(active.lease, active.holder))
    if running_in is not None:
        log.info("%s is already running in %s; dropping this copy", active.lease, running_in)
        return
    with clients.runs_lock:
        clients.runs[active.lease] = active
    # Running acks-late tasks are invisible in the queue's list; autoscalers (KEDA) add this
    # list to it so a busy worker is never scaled away. A copy left by a killed worker is
    # removed when the stage's next run ends (LREM drops every copy).
    inflight = inflight_key(queue)

    def started() -> None:
        clients.jobs.redis.rpush(inflight, active.lease)
        record_start(clients.jobs.redis, queue)

    _retrying(clients, active, "record its start", started)
    finished = _run_claimed(clients, active, stage, work)

    def release() -> None:
        clients.jobs.redis.lrem(inflight, 0, active.lease)
        clients.leases.release(active.lease, active.holder)

    if finished:
        _retrying(clients, active, "release its lease", release)


def inflight_key(queue: str) -> str:
    """The Redis list of stages running from a queue (the queue's own list holds waiting ones)."""
    return f"{queue}:inflight"


def _run_claimed(clients: WorkerClients, active: ActiveRun, stage: WorkStage,
                 work: StageWork) -> bool:
    """Claim and run the stage; False when this run was taken over (its lease is not ours)."""
    job_id = active.lease.rpartition(":")[0]
    settings = clients.settings
    try:
        current = _retrying(clients, active, "read its job", lambda: clients.jobs.get(job_id))
        claim = _retrying(clients, active, "claim its stage", lambda: clients.jobs.claim(
            job_id, stage, max_attempts=settings.MAX_ATTEMPTS, worker=this_worker(),
            budget_seconds=settings.stage_budget_seconds(
                stage, current.generation.max_new_tokens)))
    except JobNotFound:
        log.warning("job %s no longer exists (retention expired?); dropping its %s task",
                    job_id, stage)
        return True
    if claim.superseded:
        if claim.record.status is JobStatus.preprocessing:
            # Its worker may have died between recording the stage done and queuing the next.
            _retrying(clients, active, "queue its next stage", lambda: queue_stage(
                clients.celery, clients.jobs, claim.record, "inference"))
        log.info("job %s: %s was already done; dropping this copy", job_id, stage)
        return True
    if claim.record.status.terminal:
        _retrying(clients, active, "send its webhook",
                  lambda: clients.notify_if_terminal(claim.record))
        return True
    active.run = StageRun(job_id, stage, claim.record.attempts[stage])
    active.budget_ends_at = claim.record.stage_deadline_at
    try:
        try:
            ended = _retrying(clients, active, "do its work", lambda: work(claim.record, active))
        except (StaleRun, StageGaveUp):
            raise
        except Exception as error:  # a failure of the job, or a stop at a safe point
            ended = _retrying(clients, active, "end its job",
                              partial(_end_run, clients, active, error))
    except StaleRun:
        log.warning("job %s: run %d of %s was taken over; its writes were refused", job_id,
                    active.run.attempt, stage)
        return False
    if ended is not None:
        _retrying(clients, active, "send its webhook", lambda: clients.notify_if_terminal(ended))
    return True


def _log_failure(what: str, error: Exception) -> None:
    """One line for an outage of Redis or S3 (it repeats every round); a traceback otherwise."""
    if is_transient(error):
        log.warning("%s: Redis or S3 is away (%s: %s); retrying", what, type(error).__name__,
                    error)
    else:
        log.exception("%s failed; retrying", what)


def _end_run(clients: WorkerClients, active: ActiveRun, error: BaseException) -> JobRecord:
    """End the job of a run whose work stopped or failed (StaleRun when it no longer may)."""
    run = active.run
    assert run is not None
    if isinstance(error, JobCanceled):
        reason = active.stop_reason or "canceled"
        if reason == "stale":
            raise StaleRun(run)
        log.info("job %s stopped during %s: %s", run.job_id, run.stage, reason)
        if reason == "canceled":
            return clients.jobs.finish_canceled(run).record
        record = clients.jobs.check(run)
        failure = timed_out(record) if reason == "deadline" else stage_timed_out(run.stage)
        return clients.jobs.fail(run.job_id, failure, run.stage, run).record
    if isinstance(error, SoftTimeLimitExceeded):
        return clients.jobs.fail(run.job_id, stage_timed_out(run.stage), run.stage, run).record
    if isinstance(error, TesseraError):
        log.info("job %s failed in %s: %s", run.job_id, run.stage, error)
        return clients.jobs.fail(run.job_id, error, run.stage, run).record
    log.error("job %s crashed in %s", run.job_id, run.stage, exc_info=error)
    return clients.jobs.fail(run.job_id, TesseraError(
        ErrorCode.internal_error, f"Unexpected {type(error).__name__} in the {run.stage} "
        "stage; the team has the logs. Retry the job later."), run.stage, run).record


def _retrying(clients: WorkerClients, active: ActiveRun, what: str, step: Callable[[], T]) -> T:
    """Run one step of a stage, retrying passing Redis and S3 errors with backoff for up to
    STAGE_RETRY_SECONDS (StageGaveUp after that); other errors are raised at once."""
    give_up_at = time.monotonic() + clients.settings.STAGE_RETRY_SECONDS
    delay = 0.5
    while True:
        try:
            return step()
        except StaleRun:
            raise
        except Exception as error:
            if not is_transient(error):
                raise
            left = give_up_at - time.monotonic()
            if left <= 0 or active.stop_reason == "stale":
                raise StageGaveUp(f"could not {what}") from error
            wait = min(delay, left)
            log.warning("%s: could not %s (%s: %s); retrying in %.1f s", active.lease, what,
                        type(error).__name__, error, wait)
            active.beat()  # waiting out an outage is not a stall
            time.sleep(wait)
            delay = min(delay * 2, 10.0)


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
        for loop, thread_name in ((_clients.keep_alive, "lease-heartbeat"),
                                  (_clients.keep_house, "housekeeping"),
                                  (_clients.watch_runs, "stop-watch")):
            threading.Thread(target=loop, name=thread_name, daemon=True).start()
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
        # A worker started by a launcher (the inference supervisor) dies with it.
        if parent := os.environ.get(PARENT_PID_ENV):
            die_with_parent(int(parent))
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
