"""Celery task of the webhook worker (one attempt per message), and the loop that queues
retries when they fall due."""

import logging
import threading
import time
from functools import cache

from opentelemetry import context, propagate

from services.webhook_worker.celery_app import app
from services.webhook_worker.config import get_settings
from services.webhook_worker.delivery import WebhookSender
from shared.queues import WEBHOOK_QUEUE, WEBHOOK_TASK
from shared.ssrf import public_client
from shared.transient import is_transient
from shared.webhook_events import WebhookDelivery
from shared.worker_runtime import process_clients

log = logging.getLogger(__name__)


@cache
def _sender() -> WebhookSender:
    # One sender (and pooled HTTP client) per process, created lazily after fork.
    settings, clients = get_settings(), process_clients()
    http = public_client(allow_http=settings.allow_http,
                         allowed_networks=settings.allowed_networks, follow_redirects=False,
                         timeout=settings.WEBHOOK_TIMEOUT_SECONDS)
    return WebhookSender(settings=settings, jobs=clients.jobs, objects=clients.objects, http=http)


@app.task(name=WEBHOOK_TASK)
def deliver_webhook(**payload: object) -> None:
    """Make one attempt at sending a job event; a failure schedules the next attempt."""
    _sender().send(WebhookDelivery.model_validate(payload))


def queue_due_deliveries() -> None:
    """Forever: send again the attempts whose worker died mid-flight, and move retries (and
    redeliveries) whose time has come onto the webhook queue.

    Retries wait in a Redis sorted set rather than as Celery countdowns: a countdown task sits
    unacknowledged in a worker for hours, and Redis redelivers it after the visibility timeout.
    """
    sender = _sender()
    period = get_settings().WEBHOOK_SCHEDULE_POLL_SECONDS
    while True:
        try:
            for lost in sender.ledger.take_interrupted(time.time()):
                sender.resend_interrupted(lost)
            for delivery in sender.outbox.take_due(time.time()):
                # Publish inside the trace that scheduled it (the Celery instrumentation
                # propagates the current context into the message).
                token = context.attach(propagate.extract(delivery.trace_context))
                try:
                    deliver_webhook.apply_async(kwargs=delivery.model_dump(),
                                                queue=WEBHOOK_QUEUE)
                finally:
                    context.detach(token)
                sender.outbox.settle(delivery)
        except Exception as error:  # a Redis hiccup must not end the loop
            if is_transient(error):
                log.warning("webhook schedule: Redis is away (%s: %s); retrying",
                            type(error).__name__, error)
            else:
                log.exception("webhook schedule poll failed; retrying")
        threading.Event().wait(period)


def start_schedule_loop() -> None:
    """Run queue_due_deliveries in a daemon thread of this worker process."""
    threading.Thread(target=queue_due_deliveries, name="webhook-schedule", daemon=True).start()
