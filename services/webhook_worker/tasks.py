"""Celery task of the webhook worker: deliver one job event, retrying with backoff."""

import logging
from functools import cache

import httpx
from celery import Task

from services.webhook_worker.celery_app import app
from services.webhook_worker.config import get_settings
from services.webhook_worker.delivery import (
    RESULT_URL_TTL,
    DeliveryLedger,
    backoff_seconds,
    build_payload,
    event_id,
    post_signed,
)
from shared.queues import WEBHOOK_TASK
from shared.schemas import JobResult, WebhookTask
from shared.worker_runtime import process_clients

log = logging.getLogger(__name__)


@cache
def _http() -> httpx.Client:
    # One pooled client per process, created lazily after fork.
    return httpx.Client()


@app.task(name=WEBHOOK_TASK, bind=True, max_retries=None)
def deliver_webhook(self: Task, **payload: object) -> None:
    """Send one signed event to the job's webhook URL, at most once successfully."""
    task = WebhookTask.model_validate(payload)
    settings, clients = get_settings(), process_clients()
    ledger = DeliveryLedger(clients.jobs.redis, settings.KEY_PREFIX)
    message_id = event_id(task.job_id, task.event_type)
    if ledger.delivered(message_id):
        return
    if not ledger.try_lock(message_id, settings.WEBHOOK_TIMEOUT_SECONDS + 5):
        raise self.retry(countdown=settings.WEBHOOK_TIMEOUT_SECONDS)  # another send in flight
    record = clients.jobs.get(task.job_id)
    assert record.webhook_url is not None
    result, result_url = None, None
    if record.result_key is not None:
        raw = clients.objects.get_bytes(record.result_key)
        if len(raw) <= settings.WEBHOOK_INLINE_RESULT_BYTES:
            result = JobResult.model_validate_json(raw)
        else:
            result_url = clients.objects.presigned_get_url(record.result_key, RESULT_URL_TTL)
    body = build_payload(record=record, event_type=task.event_type, result=result,
                         result_url=result_url, base_url=settings.PUBLIC_BASE_URL)
    attempt = post_signed(_http(), str(record.webhook_url), message_id=message_id, body=body,
                          secret=settings.WEBHOOK_SECRET.get_secret_value(),
                          timeout=settings.WEBHOOK_TIMEOUT_SECONDS)
    ledger.record(task.job_id, attempt)
    if attempt.delivered or attempt.give_up:
        return
    if self.request.retries + 1 >= settings.WEBHOOK_MAX_ATTEMPTS:
        log.warning("webhook %s undeliverable after %d attempts", message_id,
                    self.request.retries + 1)
        return
    raise self.retry(countdown=backoff_seconds(
        self.request.retries, base=settings.WEBHOOK_BACKOFF_BASE_SECONDS,
        cap=settings.WEBHOOK_BACKOFF_MAX_SECONDS, retry_after=attempt.retry_after_seconds))
