"""Ingest API settings: what a request may carry."""

import math
from functools import lru_cache
from typing import get_args

from pydantic import Field

from services.ingest_api.media_source_settings import MediaSourceSettings
from shared.body_limit import SMALL_BODY_BYTES
from shared.schemas import MediaKind
from shared.settings import WebhookTargetSettings
from shared.webhook_events import WebhookScheduleSettings

MIB = 1024 * 1024
# Room for the form fields and multipart framing around the files of a request.
FORM_FIELDS_BYTES = MIB
# Routes whose bodies carry media as files, and the one carrying it as base64 data URLs.
_FILE_ROUTES = frozenset({"/v1/jobs", "/v1/batches"})
_BASE64_ROUTES = frozenset({"/v1/chat/jobs"})


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
    # Files of one request together; unset: the largest one file allowed, plus the form.
    # Checked from Content-Length before the body is read (and counted while it is).
    MAX_REQUEST_BYTES: int | None = Field(default=None, ge=1)

    def max_bytes(self, kind: MediaKind) -> int:
        """The upload limit for one file of this kind."""
        return {"image": self.MAX_IMAGE_BYTES, "video": self.MAX_VIDEO_BYTES,
                "pdf": self.MAX_PDF_BYTES}[kind]

    @property
    def max_file_bytes(self) -> int:
        """The largest one file of any kind may be."""
        return max(self.max_bytes(kind) for kind in get_args(MediaKind))

    @property
    def request_bytes(self) -> int:
        """The largest multipart request (files and form fields) that can be valid."""
        if self.MAX_REQUEST_BYTES is not None:
            return self.MAX_REQUEST_BYTES
        return self.max_file_bytes + FORM_FIELDS_BYTES

    def body_limit(self, path: str) -> int:
        """The largest body a request to path can have and be valid (base64 is 4/3 larger)."""
        if path in _FILE_ROUTES:
            return self.request_bytes
        if path in _BASE64_ROUTES:
            return 4 * math.ceil(self.request_bytes / 3) + FORM_FIELDS_BYTES
        return SMALL_BODY_BYTES


@lru_cache
def get_settings() -> IngestSettings:
    """The API's settings, read once from the environment."""
    return IngestSettings()
