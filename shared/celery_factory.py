"""Builds the Celery app every service uses, with the settings long GPU tasks need and a broker
transport that survives Redis restarts."""

import redis
from celery import Celery
from kombu.transport import redis as kombu_redis

from shared.queues import PRIORITY_STEPS
from shared.settings import BaseServiceSettings


class ResilientRedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, made safe to close after its connection was dropped.

    When the broker connection breaks, Celery's consumer first calls `connection.collect()`,
    which detaches the transport from its connection (`transport.client = None`), then
    `connection.close()`, which closes the channels. A channel whose first close failed (its
    BRPOP read the broken socket) is closed again then; it drops its connection pools and
    tries to give its unacknowledged messages back, rebuilding a pool from `transport.client`:
    `AttributeError: 'NoneType' object has no attribute 'hostname'`. That escapes the
    connection-error handling, and the prefork worker exits with "Unrecoverable error" while
    tasks are in flight. Reporting it as the connection error it is lets kombu swallow it;
    the messages stay in the unacked hash, and our stage leases re-queue their stages.
    """

    def _connparams(self, asynchronous: bool = False) -> dict[str, object]:
        if self.connection is None or self.connection.client is None:
            raise redis.ConnectionError("the broker connection of this channel was closed")
        params: dict[str, object] = super()._connparams(asynchronous=asynchronous)
        return params


class ResilientRedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with ResilientRedisChannel."""

    Channel = ResilientRedisChannel


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
        # A dead or frozen Redis is noticed within seconds instead of blocking a socket forever
        # (BRPOP waits 1 s at a time, well inside the read timeout).
        "socket_connect_timeout": 5,
        "socket_timeout": 30,
        "socket_keepalive": True,
        "health_check_interval": 10,
    }
    app.conf.update(
        broker_transport=f"{__name__}:ResilientRedisTransport",
        # Job state lives in our job store; Celery's result backend would say PENDING for
        # ids it never saw, so it is not used at all.
        task_ignore_result=True,
        result_backend=None,
        # A task is acknowledged only after it ran, and requeued if its process dies mid-task.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A task that raised is rejected without requeue; our stage tasks never raise (they
        # retry passing outages and re-queue themselves through their lease or Reject), so
        # this only drops messages that cannot be parsed.
        task_acks_on_failure_or_timeout=False,
        # Long tasks: prefetching would hoard jobs that other idle workers could run.
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        # Reconnect for as long as Redis is away, at start and after losing it: a worker that
        # gave up would leave its queue unserved until someone restarts it.
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Tasks in flight when the connection drops keep running: their stage runs are fenced
        # (a run taken over meanwhile has its writes refused), so finishing them is safe, and
        # canceling would throw away minutes of GPU work (the thread pool cannot cancel anyway).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_serializer="json",
        accept_content=["json"],
        # Messages to a queue nobody declared yet must still be routed by name.
        task_create_missing_queues=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app
