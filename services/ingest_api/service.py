"""Accepting a job: validate the uploads, store them, record the job, queue preprocessing."""

import hashlib
import io
import uuid
from dataclasses import dataclass
from typing import BinaryIO

from celery import Celery
from opentelemetry import trace

from services.ingest_api.config import IngestSettings
from shared.auth import Principal
from shared.errors import ErrorCode, TesseraError
from shared.job_store import JobNotFound, JobStore, utcnow
from shared.json_output import check_schema
from shared.media_types import SNIFF_BYTES, sniff_media_type
from shared.object_store import JobKeys, ObjectStore
from shared.queues import PREPROCESS_QUEUE, PREPROCESS_TASK
from shared.schemas import (
    JobCreate,
    JobRecord,
    JobStatus,
    MediaKind,
    MediaRef,
    PreprocessTask,
    StageTimes,
)
from shared.tracing import current_trace_id

tracer = trace.get_tracer(__name__)


@dataclass(frozen=True)
class Upload:
    """One file as received, before it is trusted."""

    filename: str
    file: BinaryIO


@dataclass(frozen=True)
class _CheckedUpload:
    upload: Upload
    kind: MediaKind
    mime: str
    size: int
    sha256: str


def submit_job(*, request: JobCreate, uploads: list[Upload], principal: Principal,
               settings: IngestSettings, objects: ObjectStore, jobs: JobStore,
               producer: Celery) -> JobRecord:
    """Validate everything first, then store media, record the job and queue it."""
    model = request.model or settings.DEFAULT_MODEL
    if model not in settings.served_models:
        raise TesseraError(ErrorCode.unknown_model,
                           f"Model {model!r} is not served here; choose one of "
                           f"{', '.join(settings.served_models)}.")
    if len(request.prompt) > settings.MAX_PROMPT_CHARS:
        raise TesseraError(ErrorCode.invalid_request,
                           f"The prompt has {len(request.prompt)} characters; the limit is "
                           f"{settings.MAX_PROMPT_CHARS}.")
    if request.json_schema is not None:
        check_schema(request.json_schema)
    if request.previous_job_id is not None:
        check_conversation(jobs, request.previous_job_id, principal.tenant_id,
                           settings.MAX_CONVERSATION_TURNS)
    if not uploads and request.previous_job_id is None:
        raise TesseraError(ErrorCode.invalid_request, "Attach at least one file as `files`.")
    if len(uploads) > settings.MAX_FILES:
        raise TesseraError(ErrorCode.too_many_files,
                           f"{len(uploads)} files were sent; the limit is {settings.MAX_FILES}.")
    checked = [_check_upload(upload, settings) for upload in uploads]

    job_id = f"job_{uuid.uuid4().hex}"
    with tracer.start_as_current_span("job.submit", attributes={"job.id": job_id}):
        keys = JobKeys(job_id)
        media = []
        for index, item in enumerate(checked):
            key = keys.media(index)
            item.upload.file.seek(0)
            objects.put_file(key, item.upload.file, item.size, item.mime)
            media.append(MediaRef(index=index, kind=item.kind, key=key,
                                  filename=item.upload.filename, content_type=item.mime,
                                  size_bytes=item.size, sha256=item.sha256))
        now = utcnow()
        record = JobRecord(id=job_id, tenant_id=principal.tenant_id,
                           api_key_id=principal.key_id, status=JobStatus.queued, model=model,
                           prompt=request.prompt,
                           generation=request.generation, media_options=request.media_options,
                           media=media, webhook_url=request.webhook_url,
                           webhook_events=request.webhook_events,
                           json_schema=request.json_schema,
                           previous_job_id=request.previous_job_id,
                           trace_id=current_trace_id(), times=StageTimes(created_at=now),
                           updated_at=now)
        jobs.create(record)
        producer.send_task(PREPROCESS_TASK, kwargs=PreprocessTask(job_id=job_id).model_dump(),
                           queue=PREPROCESS_QUEUE)
    return record


def check_conversation(jobs: JobStore, previous_job_id: str, tenant_id: str,
                       max_turns: int) -> None:
    """A job may continue a succeeded job of its tenant whose conversation has fewer than
    max_turns turns."""
    job_id: str | None = previous_job_id
    for _ in range(max_turns):
        if job_id is None:
            return
        try:
            record = jobs.get(job_id)
        except JobNotFound:
            record = None
        if record is None or record.tenant_id != tenant_id:
            raise TesseraError(ErrorCode.invalid_request,
                               f"previous_job_id {job_id!r} does not exist.")
        if record.status is not JobStatus.succeeded:
            raise TesseraError(ErrorCode.invalid_request,
                               f"Job {job_id} is {record.status}; only a succeeded job can be "
                               "continued.")
        job_id = record.previous_job_id
    if job_id is not None:
        raise TesseraError(ErrorCode.invalid_request,
                           f"The conversation already has {max_turns} turns; start a new one.")


def _check_upload(upload: Upload, settings: IngestSettings) -> _CheckedUpload:
    """Size and hash one file; its real type comes from its bytes, not its name."""
    media_type = sniff_media_type(upload.file.read(SNIFF_BYTES))
    if media_type is None:
        raise TesseraError(ErrorCode.unsupported_media,
                           f"{upload.filename!r} is not a supported image, video or PDF "
                           "(its content was checked, not its name).", filename=upload.filename)
    size = upload.file.seek(0, io.SEEK_END)
    limit = settings.max_bytes(media_type.kind)
    if size > limit:
        raise TesseraError(ErrorCode.media_too_large,
                           f"{upload.filename!r} is larger than the {limit // 2**20} MiB limit for "
                           f"a {media_type.kind}.", filename=upload.filename, limit_bytes=limit)
    upload.file.seek(0)
    digest = hashlib.file_digest(upload.file, "sha256").hexdigest()  # type: ignore[arg-type]
    return _CheckedUpload(upload, media_type.kind, media_type.mime, size, digest)
