"""Webhook worker settings: signing secret, timeouts and the retry schedule."""

from functools import lru_cache

from pydantic import Field

from shared.settings import WebhookSigningSettings


class WebhookSettings(WebhookSigningSettings):
    """Settings of the webhook delivery worker."""

    OTEL_SERVICE_NAME: str = "webhook-worker"
    WEBHOOK_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0)
    WEBHOOK_MAX_ATTEMPTS: int = Field(default=10, ge=1)
    WEBHOOK_BACKOFF_BASE_SECONDS: float = Field(default=5.0, gt=0)
    WEBHOOK_BACKOFF_MAX_SECONDS: float = Field(default=600.0, gt=0)
    # Results up to this size ride in the payload; larger ones are linked instead.
    WEBHOOK_INLINE_RESULT_BYTES: int = Field(default=64 * 1024, ge=0)


@lru_cache
def get_settings() -> WebhookSettings:
    """The worker's settings, read once from the environment."""
    return WebhookSettings()
