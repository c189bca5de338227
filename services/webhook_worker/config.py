"""Webhook worker settings: signing secret, timeouts, the retry schedule and allowed targets."""

from functools import lru_cache

from pydantic import Field

from shared.settings import WebhookSigningSettings, WebhookTargetSettings
from shared.webhook_events import WebhookScheduleSettings


class WebhookSettings(WebhookSigningSettings, WebhookTargetSettings, WebhookScheduleSettings):
    """Settings of the webhook delivery worker."""

    OTEL_SERVICE_NAME: str = "webhook-worker"
    # How often each worker process moves due retries from the Redis schedule to the queue.
    WEBHOOK_SCHEDULE_POLL_SECONDS: float = Field(default=0.5, gt=0)
    # Results up to this size ride in the payload; larger ones are linked instead.
    WEBHOOK_INLINE_RESULT_BYTES: int = Field(default=64 * 1024, ge=0)


@lru_cache
def get_settings() -> WebhookSettings:
    """The worker's settings, read once from the environment."""
    return WebhookSettings()
