"""Presigned direct uploads: hand out S3 URLs, verify what arrived, queue the probe, use it.

Completion copies the client's object server-side to a key no client URL reaches and verifies
that copy, so a PUT after completion cannot change what jobs read under the verified SHA-256.
Refused uploads abort their multipart upload; abandoned ones (never completed) must be dropped
by an S3 lifecycle rule with AbortIncompleteMultipartUpload on `uploads/`.
"""

import math
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Literal, NoReturn, get_args

from celery import Celery
from minio.error import S3Error
from pydantic import BaseModel, ConfigDict, Field

from services.ingest_api.media_source_settings import MediaSourceSettings
from services.ingest_api.s3_uploads import DirectUploads
from shared.errors import ErrorCode, TesseraError, format_size
from shared.job_store import utcnow
from shared.media_types import SNIFF_BYTES, sniff_media_type
from shared.object_store import JobKeys, ObjectStore
from shared.queues import PREPROCESS_QUEUE, PROBE_UPLOAD_TASK
from shared.schemas import MediaKind, MediaRef
from shared.upload_store import (
    MediaProbe,
    ProbeUploadTask,
    UploadError,
    UploadNotFound,
    UploadRecord,
    UploadStatus,
    UploadStore,
    upload_key,
    verified_upload_key,
)

# S3's rules: every part but the last at least 5 MiB; we list parts in one call (≤ 1000).
MIN_PART_BYTES = 5 * 1024 * 1024
MAX_PARTS = 1000
# A media type (RFC 6838) with optional parameters, in printable ASCII: it becomes an HTTP
# header of the S3 upload, where other characters (CR, LF, non-Latin-1) are refused or worse.
_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
MEDIA_TYPE_PATTERN = (rf"^{_TOKEN}/{_TOKEN}"
                      r"""(\s*;\s*[A-Za-z0-9!#$&^_.+-]+=([!#-~]+|"[ !#-~]*"))*$""")


class UploadCreate(BaseModel):
    """A client announces a file it will PUT to S3 itself."""

    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=255)
    size_bytes: int = Field(gt=0)
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="Hex SHA-256 of the file")
    content_type: str | None = Field(default=None, max_length=255, pattern=MEDIA_TYPE_PATTERN,
                                     description="A media type such as video/mp4")
    parts: int | None = Field(default=None, ge=1, le=MAX_PARTS,
                              description="Upload in this many parts (multipart) instead of "
                                          "one PUT; every part but the last is at least 5 MiB")


class UploadPartUrl(BaseModel):
    """Where to PUT one part, and how many bytes of the file it carries."""

    part_number: int
    url: str
    size_bytes: int


class UploadCreated(BaseModel):
    """Where to PUT the file (one URL) or its parts (one URL each), until expires_at."""

    upload_id: str
    method: Literal["PUT"] = "PUT"
    url: str | None = None
    parts: list[UploadPartUrl] | None = None
    part_size_bytes: int
    expires_at: datetime


class CompletedPart(BaseModel):
    """A part as S3 acknowledged it (the ETag header of the part's PUT)."""

    part_number: int = Field(ge=1)
    etag: str


class UploadComplete(BaseModel):
    """The parts of a multipart upload; omitted, the parts S3 holds are used."""

    model_config = ConfigDict(extra="forbid")

    parts: list[CompletedPart] | None = None


class UploadPublic(BaseModel):
    """An upload as clients see it: `ready` (with its probe) before a job can use it."""

    id: str
    status: UploadStatus
    filename: str
    size_bytes: int
    sha256: str
    kind: MediaKind | None
    content_type: str | None
    probe: MediaProbe | None
    error: UploadError | None
    created_at: datetime
    expires_at: datetime

    @classmethod
    def from_record(cls, record: UploadRecord) -> "UploadPublic":
        """The public view of a stored upload."""
        return cls.model_validate(record.model_dump(include=set(cls.model_fields)))


def create_upload(*, request: UploadCreate, tenant_id: str, settings: MediaSourceSettings,
                  max_bytes: Callable[[MediaKind], int], uploads: UploadStore,
                  direct: DirectUploads) -> UploadCreated:
    """Record an upload and presign a PUT URL for it, or one per part."""
    largest = max(max_bytes(kind) for kind in get_args(MediaKind))
    if request.size_bytes > largest:
        raise TesseraError(ErrorCode.media_too_large,
                           f"{request.filename!r} is {format_size(request.size_bytes)}; no media "
                           f"kind allows more than {format_size(largest)}.", limit_bytes=largest)
    part_size = math.ceil(request.size_bytes / (request.parts or 1))
    if request.parts not in (None, 1) and part_size < MIN_PART_BYTES:
        raise TesseraError(ErrorCode.invalid_request,
                           f"{request.parts} parts of {request.size_bytes} bytes are smaller than "
                           f"S3's 5 MiB minimum part size; use at most "
                           f"{max(1, request.size_bytes // MIN_PART_BYTES)} parts.")
    part_count = math.ceil(request.size_bytes / part_size)
    now = utcnow()
    upload_id = f"upl_{uuid.uuid4().hex}"
    key = upload_key(upload_id)
    expires = timedelta(seconds=settings.UPLOAD_URL_EXPIRES_SECONDS)
    content_type = request.content_type or "application/octet-stream"
    s3_upload_id = direct.create_multipart(key, content_type) if part_count > 1 else None
    record = UploadRecord(
        id=upload_id, tenant_id=tenant_id, status=UploadStatus.pending, key=key,
        filename=request.filename,
        size_bytes=request.size_bytes, sha256=request.sha256.lower(),
        declared_content_type=request.content_type, s3_upload_id=s3_upload_id,
        part_count=part_count, part_size_bytes=part_size, created_at=now, updated_at=now,
        urls_expire_at=now + expires,
        expires_at=now + timedelta(seconds=settings.UPLOAD_RETENTION_SECONDS))
    uploads.create(record)
    if s3_upload_id is None:
        return UploadCreated(upload_id=upload_id, url=direct.presigned_put(key, expires),
                             part_size_bytes=part_size, expires_at=record.urls_expire_at)
    parts = [UploadPartUrl(part_number=number,
                           url=direct.presigned_part(key, s3_upload_id, number, expires),
                           size_bytes=min(part_size,
                                          request.size_bytes - (number - 1) * part_size))
             for number in range(1, part_count + 1)]
    return UploadCreated(upload_id=upload_id, parts=parts, part_size_bytes=part_size,
                         expires_at=record.urls_expire_at)


def complete_upload(*, upload_id: str, tenant_id: str, request: UploadComplete,
                    max_bytes: Callable[[MediaKind], int], uploads: UploadStore,
                    direct: DirectUploads, producer: Celery) -> UploadRecord:
    """Join the parts, copy the object where clients cannot write, verify size, SHA-256 and
    type of that copy, then queue the probe.

    A mismatch deletes the bytes and fails the upload; completing twice is harmless.
    """
    record = get_upload(upload_id=upload_id, tenant_id=tenant_id, uploads=uploads)
    if record.status is UploadStatus.failed and record.error is not None:
        raise TesseraError(record.error.code, record.error.message)
    if record.status is not UploadStatus.pending:
        return record
    if record.s3_upload_id is not None:
        _complete_parts(record, request, uploads, direct)
    # The presigned PUT URL stays valid until it expires: verify (and later use) a snapshot
    # that only the server can write, never the client's key.
    verified_key = verified_upload_key(upload_id, uuid.uuid4().hex)
    size = direct.snapshot(record.key, verified_key)
    if size is None:
        current = uploads.get(upload_id)
        if current.status is not UploadStatus.pending:
            return current  # a concurrent completion verified and removed the object already
        raise TesseraError(ErrorCode.upload_not_ready,
                           f"Nothing has been uploaded for {upload_id} yet: PUT the file to the "
                           "URL from POST /v1/uploads, then complete it.")
    if size != record.size_bytes:
        _fail(record, verified_key, uploads, direct, TesseraError(
            ErrorCode.upload_verification_failed,
            f"S3 holds {size} bytes but {record.size_bytes} were announced; create a new "
            "upload and send the whole file."))
    stored = direct.read_back(verified_key, SNIFF_BYTES)
    if stored.sha256 != record.sha256:
        _fail(record, verified_key, uploads, direct, TesseraError(
            ErrorCode.upload_verification_failed,
            f"The uploaded bytes have SHA-256 {stored.sha256}, not the announced "
            f"{record.sha256}; the file changed or was damaged in transit. Create a new upload."))
    media_type = sniff_media_type(stored.head)
    if media_type is None:
        _fail(record, verified_key, uploads, direct, TesseraError(
            ErrorCode.unsupported_media,
            f"{record.filename!r} is not a supported image, video or PDF (its content was "
            "checked, not its name)."))
    limit = max_bytes(media_type.kind)
    if size > limit:
        _fail(record, verified_key, uploads, direct, TesseraError(
            ErrorCode.media_too_large,
            f"{record.filename!r} is {format_size(size)}; a {media_type.kind} may be at most "
            f"{format_size(limit)}.", limit_bytes=limit))

    def verified(current: UploadRecord) -> UploadRecord | None:
        if current.status is not UploadStatus.pending:
            return None
        current.status = UploadStatus.probing
        current.key = verified_key
        current.kind = media_type.kind
        current.content_type = media_type.mime
        return current

    client_key = record.key
    record = uploads.update(upload_id, verified)
    if record.key != verified_key:
        direct.delete(verified_key)  # a concurrent completion won; its snapshot is used
    direct.delete(client_key)
    producer.send_task(PROBE_UPLOAD_TASK,
                       kwargs=ProbeUploadTask(upload_id=upload_id).model_dump(),
                       queue=PREPROCESS_QUEUE)
    return record


def get_upload(*, upload_id: str, tenant_id: str, uploads: UploadStore) -> UploadRecord:
    """The tenant's upload with this id (refused when unknown, expired or another tenant's)."""
    try:
        record = uploads.get(upload_id)
    except UploadNotFound:
        record = None
    if record is None or record.tenant_id != tenant_id:
        raise TesseraError(ErrorCode.upload_not_found,
                           f"No upload has the id {upload_id!r}, or it expired; create a new "
                           "one with POST /v1/uploads.", upload_id=upload_id)
    return record


def ready_upload(*, upload_id: str, tenant_id: str, uploads: UploadStore) -> UploadRecord:
    """The tenant's upload with this id, refused unless it is ready to be used by a job."""
    record = get_upload(upload_id=upload_id, tenant_id=tenant_id, uploads=uploads)
    if record.status is not UploadStatus.ready or record.kind is None \
            or record.content_type is None:
        detail = f": {record.error.message}" if record.error is not None else ""
        raise TesseraError(ErrorCode.upload_not_ready,
                           f"Upload {upload_id} is {record.status}, not ready{detail}. Complete "
                           "it and wait until GET /v1/uploads/{id} says ready.",
                           upload_id=upload_id)
    return record


def media_ref_from_upload(*, upload_id: str, tenant_id: str, job_id: str, index: int,
                          uploads: UploadStore, objects: ObjectStore) -> MediaRef:
    """Copy a tenant's ready upload (server-side) to the job's index-th input."""
    record = ready_upload(upload_id=upload_id, tenant_id=tenant_id, uploads=uploads)
    assert record.kind is not None and record.content_type is not None
    key = JobKeys(job_id).media(index)
    objects.copy(record.key, key)
    return MediaRef(index=index, kind=record.kind, key=key, filename=record.filename,
                    content_type=record.content_type, size_bytes=record.size_bytes,
                    sha256=record.sha256)


def _complete_parts(record: UploadRecord, request: UploadComplete, uploads: UploadStore,
                    direct: DirectUploads) -> None:
    assert record.s3_upload_id is not None
    if request.parts is not None:
        parts = {part.part_number: part.etag for part in request.parts}
    else:
        parts = direct.uploaded_parts(record.key, record.s3_upload_id)
    expected = set(range(1, record.part_count + 1))
    if set(parts) != expected:
        missing = sorted(expected - set(parts))
        raise TesseraError(ErrorCode.upload_not_ready,
                           f"Upload {record.id} has {record.part_count} parts; missing "
                           f"{missing or 'none'}, unexpected {sorted(set(parts) - expected)}. "
                           "PUT every part, then complete it.")
    try:
        direct.complete_multipart(record.key, record.s3_upload_id, parts)
    except S3Error as error:
        if error.code == "NoSuchUpload" and direct.size(record.key) is not None:
            return  # a concurrent completion joined the parts already
        raise TesseraError(ErrorCode.upload_verification_failed,
                           f"S3 refused to join the parts of {record.id} ({error.code}: "
                           f"{error.message}); check the ETags and that every part but the last "
                           f"is exactly {record.part_size_bytes} bytes.") from None


def _fail(record: UploadRecord, verified_key: str, uploads: UploadStore, direct: DirectUploads,
          error: TesseraError) -> NoReturn:
    """Mark the upload failed, drop its bytes (and any unfinished multipart upload), raise."""

    def failed(current: UploadRecord) -> UploadRecord:
        current.status = UploadStatus.failed
        current.error = UploadError(code=error.code, message=error.message)
        return current

    uploads.update(record.id, failed)
    if record.s3_upload_id is not None:
        direct.abort_multipart(record.key, record.s3_upload_id)
    direct.delete(record.key)
    direct.delete(verified_key)
    raise error
