"""Preprocessing worker settings: limits that keep hostile media from wedging a worker."""

from functools import lru_cache

from pydantic import Field

from shared.settings import BaseServiceSettings


class PreprocessSettings(BaseServiceSettings):
    """Settings of the preprocessing worker."""

    OTEL_SERVICE_NAME: str = "preprocess-worker"
    MAX_IMAGE_PIXELS: int = Field(default=80_000_000, ge=1)
    MAX_ASPECT_RATIO: float = Field(default=200.0, ge=1)
    MAX_PDF_PAGES: int = Field(default=64, ge=1)
    MAX_VIDEO_DECODE_SECONDS: float = Field(default=60.0, gt=0)
    # Reference pixels at about three times the cost on large photos; off, JPEGs decode
    # DCT-scaled and resizes run on two threads (README, performance, states the difference).
    EXACT_IMAGE_RESIZE: bool = False
    # Keep prepared tiles by content hash and options, so a repeated input is prepared once.
    PREPARED_CACHE: bool = True


@lru_cache
def get_settings() -> PreprocessSettings:
    """The worker's settings, read once from the environment."""
    return PreprocessSettings()
