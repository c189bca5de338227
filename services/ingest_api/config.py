"""Ingest API settings: what a request may carry."""

from functools import lru_cache

from pydantic import Field

from services.ingest_api.media_source_settings import MediaSourceSettings
from shared.schemas import MediaKind
from shared.settings import WebhookTargetSettings
from shared.webhook_events import WebhookScheduleSettings

MIB = 1024 * 1024


class IngestSettings(MediaSourceSettings, WebhookTargetSettings, WebhookScheduleSettings):
    """Settings of the ingest API."""

    OTEL_SERVICE_NAME: str = "ingest-api"
    MAX_FILES: int = Field(default=16, ge=1)
    MAX_IMAGE_BYTES: int = Field(default=32 * MIB, ge=1)
    MAX_VIDEO_BYTES: int = Field(default=512 * MIB, ge=1)
    MAX_PDF_BYTES: int = Field(default=128 * MIB, ge=1)
    MAX_PROMPT_CHARS: int = Field(default=32_000, ge=1)
    MAX_CONVERSATION_TURNS: int = Field(default=16, ge=1)
    MAX_BATCH_LINES: int = Field(default=1000, ge=1)
    # Jobs waiting for one model (preprocess and inference queues) before 503 queue_full.
    MAX_QUEUED_JOBS: int = Field(default=10_000, ge=1)
    # How long jobs and results are kept after they end, unless a job asks otherwise.
    RETENTION_SECONDS: int = Field(default=7 * 24 * 3600, ge=3600)
    # Checked from Content-Length before the body is read.
    MAX_REQUEST_BYTES: int = Field(default=1024 * MIB, ge=1)

    def max_bytes(self, kind: MediaKind) -> int:
        """The upload limit for one file of this kind."""
        return {"image": self.MAX_IMAGE_BYTES, "video": self.MAX_VIDEO_BYTES,
                "pdf": self.MAX_PDF_BYTES}[kind]


@lru_cache
def get_settings() -> IngestSettings:
    """The API's settings, read once from the environment."""
    return IngestSettings()
