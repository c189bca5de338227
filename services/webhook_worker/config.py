"""Webhook worker settings: signing secret, timeouts, the retry schedule and allowed targets."""

from functools import lru_cache
from typing import Self

from pydantic import Field, model_validator

from shared.settings import WebhookSigningSettings, WebhookTargetSettings
from shared.webhook_events import (
    DEFAULT_BACKOFF_BASE_SECONDS,
    DEFAULT_BACKOFF_MAX_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETRY_AFTER_MAX_SECONDS,
    DEFAULT_TIMEOUT_SECONDS,
    WEBHOOK_DATA_TTL_SECONDS,
    retry_horizon_seconds,
)


class WebhookSettings(WebhookSigningSettings, WebhookTargetSettings):
    """Settings of the webhook delivery worker."""

    OTEL_SERVICE_NAME: str = "webhook-worker"
    WEBHOOK_TIMEOUT_SECONDS: float = Field(default=DEFAULT_TIMEOUT_SECONDS, gt=0)
    WEBHOOK_MAX_ATTEMPTS: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1)
    WEBHOOK_BACKOFF_BASE_SECONDS: float = Field(default=DEFAULT_BACKOFF_BASE_SECONDS, gt=0)
    WEBHOOK_BACKOFF_MAX_SECONDS: float = Field(default=DEFAULT_BACKOFF_MAX_SECONDS, gt=0)
    # A receiver's Retry-After is honoured up to this, so the retry horizon stays bounded.
    WEBHOOK_RETRY_AFTER_MAX_SECONDS: float = Field(default=DEFAULT_RETRY_AFTER_MAX_SECONDS, ge=0)
    # How often each worker process moves due retries from the Redis schedule to the queue.
    WEBHOOK_SCHEDULE_POLL_SECONDS: float = Field(default=0.5, gt=0)
    # Results up to this size ride in the payload; larger ones are linked instead.
    WEBHOOK_INLINE_RESULT_BYTES: int = Field(default=64 * 1024, ge=0)

    @model_validator(mode="after")
    def _retries_end_before_their_events_expire(self) -> Self:
        horizon = retry_horizon_seconds(
            max_attempts=self.WEBHOOK_MAX_ATTEMPTS, base=self.WEBHOOK_BACKOFF_BASE_SECONDS,
            cap=self.WEBHOOK_BACKOFF_MAX_SECONDS,
            retry_after_cap=self.WEBHOOK_RETRY_AFTER_MAX_SECONDS,
            timeout=self.WEBHOOK_TIMEOUT_SECONDS)
        if horizon > WEBHOOK_DATA_TTL_SECONDS:
            raise ValueError(f"the retry schedule spans {horizon:.0f} s, longer than events are "
                             f"kept ({WEBHOOK_DATA_TTL_SECONDS} s): lower the attempts or backoff")
        return self


@lru_cache
def get_settings() -> WebhookSettings:
    """The worker's settings, read once from the environment."""
    return WebhookSettings()
