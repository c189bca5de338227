"""Direct uploads to S3: their records in Redis, their object key and the probe task's contract."""

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Literal

import redis
from pydantic import BaseModel

from shared.errors import ErrorCode
from shared.job_store import utcnow
from shared.redis_documents import update_document
from shared.schemas import MediaKind

# The probe runs in the preprocessing workers (they have the media libraries), on their queue.


def upload_key(upload_id: str) -> str:
    """Where the client PUTs the bytes of a direct upload (its presigned URLs point here)."""
    return f"uploads/{upload_id}/original"


def verified_upload_key(upload_id: str, snapshot_id: str) -> str:
    """A server-side copy of a direct upload, verified on completion; no client URL reaches it.

    Each completion attempt copies to its own key, so a concurrent attempt cannot overwrite
    the bytes another one verified.
    """
    return f"uploads/{upload_id}/verified/{snapshot_id}"


class UploadStatus(StrEnum):
    """pending (URLs handed out) → probing (bytes verified) → ready, or failed."""

    pending = "pending"
    probing = "probing"
    ready = "ready"
    failed = "failed"


class MediaProbe(BaseModel):
    """What the headers of an upload say, read before any job uses it."""

    kind: MediaKind
    content_type: str
    width: int | None = None
    height: int | None = None
    duration_seconds: float | None = None
    frame_rate: float | None = None
    pages: int | None = None


class UploadError(BaseModel):
    """Why an upload cannot be used."""

    code: ErrorCode
    message: str


class UploadRecord(BaseModel):
    """One direct upload as stored in Redis."""

    id: str
    tenant_id: str
    status: UploadStatus
    # The client-writable key while pending; the verified copy's key from completion on.
    key: str
    filename: str
    size_bytes: int
    sha256: str
    declared_content_type: str | None = None
    # The S3 multipart upload id; None for a single PUT.
    s3_upload_id: str | None = None
    part_count: int = 1
    part_size_bytes: int
    created_at: datetime
    updated_at: datetime
    urls_expire_at: datetime
    expires_at: datetime
    kind: MediaKind | None = None
    content_type: str | None = None
    probe: MediaProbe | None = None
    # Probes started; a file that kills the worker is failed after a few, not retried forever.
    probe_attempts: int = 0
    error: UploadError | None = None


class ProbeUploadTask(BaseModel):
    """Queue payload asking a preprocessing worker to probe a verified upload."""

    schema_version: Literal[1] = 1
    upload_id: str


class UploadNotFound(KeyError):
    """No upload has this id (or it expired)."""


class UploadStore:
    """Upload records in Redis; each expires with its upload."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix

    def _key(self, upload_id: str) -> str:
        return f"{self.prefix}:upload:{upload_id}"

    def create(self, record: UploadRecord) -> None:
        """Store a new upload until its expiry; an existing id is an error."""
        seconds = max(1, int((record.expires_at - utcnow()).total_seconds()))
        if not self.redis.set(self._key(record.id), record.model_dump_json(), nx=True,
                              ex=seconds):
            raise ValueError(f"upload {record.id} already exists")

    def get(self, upload_id: str) -> UploadRecord:
        """The stored upload (UploadNotFound when there is none)."""
        raw = self.redis.get(self._key(upload_id))
        if raw is None:
            raise UploadNotFound(upload_id)
        return UploadRecord.model_validate_json(raw)

    def update(self, upload_id: str,
               mutate: Callable[[UploadRecord], UploadRecord | None]) -> UploadRecord:
        """Apply mutate atomically (None leaves the record as it is); returns the record."""
        before, after = update_document(self.redis, self._key(upload_id), UploadRecord, mutate,
                                        missing=lambda: UploadNotFound(upload_id))
        return before if after is None else after
