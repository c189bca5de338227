"""Results API settings."""

from functools import lru_cache

from pydantic import Field

from shared.settings import BaseServiceSettings


class ResultsSettings(BaseServiceSettings):
    """Settings of the results API."""

    OTEL_SERVICE_NAME: str = "results-api"
    # A quiet event stream sends a comment line this often, well inside the idle timeouts of
    # proxies and load balancers (often 30-60 s), so they do not cut it.
    EVENTS_KEEPALIVE_SECONDS: float = Field(default=15.0, gt=0)
    # Where browsers reach this deployment's ingest API: the web page submits jobs (with the
    # user's API key) there and nowhere else.
    INGEST_PUBLIC_URL: str = "http://127.0.0.1:8000"


@lru_cache
def get_settings() -> ResultsSettings:
    """The API's settings, read once from the environment."""
    return ResultsSettings()
