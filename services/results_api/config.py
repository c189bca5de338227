"""Results API settings."""

from functools import lru_cache

from pydantic import Field

from shared.settings import BaseServiceSettings


class ResultsSettings(BaseServiceSettings):
    """Settings of the results API."""

    OTEL_SERVICE_NAME: str = "results-api"
    # How long one read of the event stream blocks before sending a keep-alive comment.
    EVENTS_POLL_SECONDS: float = Field(default=15.0, gt=0)


@lru_cache
def get_settings() -> ResultsSettings:
    """The API's settings, read once from the environment."""
    return ResultsSettings()
