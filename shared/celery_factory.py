"""Builds the Celery app every service uses, with the settings long GPU tasks need."""

from celery import Celery

from shared.queues import PRIORITY_STEPS
from shared.settings import BaseServiceSettings


def create_celery_app(name: str, settings: BaseServiceSettings) -> Celery:
    """A Celery app on the configured Redis, acks-late and prefetch 1, results ignored."""
    app = Celery(name, broker=settings.REDIS_URL)
    transport = {
        # Must exceed the longest task or Redis redelivers it while it still runs.
        "visibility_timeout": settings.VISIBILITY_TIMEOUT_SECONDS,
        # Priority lists become "queue:3" and not an invisible "queue\x06\x163".
        "sep": ":",
        "priority_steps": list(PRIORITY_STEPS),
        "queue_order_strategy": "priority",
    }
    app.conf.update(
        # Job state lives in our job store; Celery's result backend would say PENDING for
        # ids it never saw, so it is not used at all.
        task_ignore_result=True,
        result_backend=None,
        # A task is acknowledged only after it ran, and requeued if its process dies mid-task.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A task that raised (only infrastructure errors escape our stage protocol) stays
        # unacknowledged, so the broker redelivers it rather than dropping the job.
        task_acks_on_failure_or_timeout=False,
        # Long tasks: prefetching would hoard jobs that other idle workers could run.
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        # Messages to a queue nobody declared yet must still be routed by name.
        task_create_missing_queues=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app
