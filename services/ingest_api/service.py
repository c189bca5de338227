"""Accepting a job: validate the uploads, store them, record the job, queue preprocessing."""

import hashlib
import io
import logging
import math
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import BinaryIO

from celery import Celery
from opentelemetry import trace

from services.ingest_api.config import IngestSettings
from services.ingest_api.idempotency import IdempotencyKeys, fingerprint
from services.ingest_api.remote_media import media_ref_from_url
from services.ingest_api.uploads import media_ref_from_upload, ready_upload
from shared.auth import Principal
from shared.context_budget import InputShape, check_fits, minimum_visual_tokens
from shared.dispatch import queue_stage
from shared.errors import ErrorCode, TesseraError, format_size
from shared.job_store import JobNotFound, JobStore, utcnow
from shared.json_output import check_schema
from shared.media_types import SNIFF_BYTES, sniff_media_type
from shared.model_cards import ModelCardStore
from shared.object_store import JobKeys, ObjectStore
from shared.outages import RETRY_AFTER_SECONDS, outage
from shared.queues import PREPROCESS_QUEUE, inference_queue, priority_lists
from shared.schemas import (
    FileInput,
    InputRef,
    JobCreate,
    JobRecord,
    JobStatus,
    MediaKind,
    MediaRef,
    StageTimes,
    UploadInput,
    UrlInput,
)
from shared.ssrf import check_public_url
from shared.tracing import current_trace_id
from shared.upload_store import UploadStore

tracer = trace.get_tracer(__name__)
logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Submission:
    """The accepted job, and whether it was created by an earlier request with the same key."""

    record: JobRecord
    replayed: bool


def submit_job(*, request: JobCreate, files: dict[str, Upload], principal: Principal,
               idempotency_key: str | None, settings: IngestSettings, objects: ObjectStore,
               jobs: JobStore, producer: Celery) -> Submission:
    """Validate everything first, then store media, record the job and queue it; a repeated
    Idempotency-Key with the same request returns the job the first request created.

    `files` are the request's attached files by the names its `inputs` use.
    """
    model, checked = validate_request(request, files, principal=principal,
                                      settings=settings, jobs=jobs)
    if idempotency_key is None:
        return Submission(accept_job(request, checked, model, principal, settings, objects, jobs,
                                  producer), replayed=False)
    keys = IdempotencyKeys(jobs.redis, settings.KEY_PREFIX)
    digest = fingerprint(request.model_dump(mode="json"),
                         [(item.upload.filename, item.sha256) for item in checked.values()])
    claim = keys.begin(principal.tenant_id, idempotency_key, digest)
    if isinstance(claim, str):
        try:
            return Submission(jobs.get(claim), replayed=True)
        except JobNotFound:
            raise TesseraError(ErrorCode.result_gone,
                               f"This Idempotency-Key created job {claim}, which was deleted "
                               "when its retention ended.") from None
    # Held while the job is accepted (URL fetches included) and renewed meanwhile.
    with claim:
        try:
            record = accept_job(request, checked, model, principal, settings, objects, jobs,
                                producer)
        except BaseException:
            claim.release()
            raise
        claim.finish(digest, record.id)
    return Submission(record, replayed=False)


def validate_request(request: JobCreate, files: dict[str, Upload], *, principal: Principal,
                     settings: IngestSettings,
                     jobs: JobStore) -> tuple[str, dict[str, "_CheckedUpload"]]:
    """Everything that can refuse a request, before anything is stored: the model to use and
    the attached files its inputs name, sized, typed by content and hashed."""
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
    if not request.inputs and request.previous_job_id is None:
        raise TesseraError(ErrorCode.invalid_request,
                           "Send at least one input: a file, an upload or a URL.")
    if len(request.inputs) > settings.MAX_FILES:
        raise TesseraError(ErrorCode.too_many_files,
                           f"{len(request.inputs)} inputs were sent; the limit is "
                           f"{settings.MAX_FILES}.")
    named = {item.file for item in request.inputs if isinstance(item, FileInput)}
    missing = sorted(named - files.keys())
    if missing:
        raise TesseraError(ErrorCode.invalid_request,
                           f"Inputs name files that were not attached: {', '.join(missing)}.")
    if request.webhook_url is not None:
        check_public_url(str(request.webhook_url), allow_http=settings.allow_http,
                         allowed_networks=settings.allowed_networks)
    probed = _check_sources(request, principal, settings, jobs)
    checked = {name: _check_upload(files[name], settings) for name in sorted(named)}
    _check_context(request, model, checked, probed, settings, jobs)
    return model, checked


def _check_sources(request: JobCreate, principal: Principal, settings: IngestSettings,
                   jobs: JobStore) -> dict[str, InputShape]:
    """Refuse upload inputs that are not ready and URLs that may not be fetched, before any
    input is stored (the fetch checks the URL again, and every redirect); the shapes of the
    ready uploads, by id."""
    uploads = UploadStore(jobs.redis, settings.KEY_PREFIX)
    probed = {}
    for item in request.inputs:
        if isinstance(item, UploadInput):
            record = ready_upload(upload_id=item.upload_id, tenant_id=principal.tenant_id,
                                  uploads=uploads)
            probed[item.upload_id] = InputShape(
                record.kind, record.probe.pages if record.probe is not None else None)
        elif isinstance(item, UrlInput):
            check_public_url(str(item.url), allow_http=settings.URL_FETCH_ALLOW_HTTP,
                             allowed_networks=settings.url_fetch_allowed_networks)
    return probed


def _check_context(request: JobCreate, model: str, checked: dict[str, "_CheckedUpload"],
                   probed: dict[str, InputShape], settings: IngestSettings,
                   jobs: JobStore) -> None:
    """Refuse media that cannot fit the model's context, from what is known before anything
    is stored; no check while no replica of the model has published its card."""
    card = ModelCardStore(jobs.redis, settings.KEY_PREFIX).get(model)
    if card is None:
        return
    shapes = [InputShape(checked[item.file].kind) if isinstance(item, FileInput)
              else probed[item.upload_id] if isinstance(item, UploadInput)
              else InputShape(None) for item in request.inputs]
    check_fits(*minimum_visual_tokens(shapes, request.media_options, card.tokens_per_tile),
               card)


def accept_job(request: JobCreate, checked: dict[str, "_CheckedUpload"], model: str,
               principal: Principal, settings: IngestSettings, objects: ObjectStore,
               jobs: JobStore, producer: Celery) -> JobRecord:
    """Store the media in input order, record the job and queue it."""
    check_backpressure(jobs, {model: 1}, settings)
    job_id = new_job_id()
    with tracer.start_as_current_span("job.submit", attributes={"job.id": job_id}):
        record = prepare_job(job_id, request, checked, model, principal, settings, objects,
                             jobs)
        jobs.create(record)
        queue_or_fail(producer, jobs, record)
    return record


def new_job_id() -> str:
    """A fresh job id."""
    return f"job_{uuid.uuid4().hex}"


def prepare_job(job_id: str, request: JobCreate, checked: dict[str, "_CheckedUpload"],
                model: str, principal: Principal, settings: IngestSettings,
                objects: ObjectStore, jobs: JobStore) -> JobRecord:
    """Store a new job's inputs (files put, uploads copied, URLs fetched) and build its record,
    not stored yet; if an input fails, the inputs stored so far are deleted."""
    try:
        media = [_store_input(item, index, job_id, checked=checked,
                              tenant_id=principal.tenant_id, settings=settings,
                              objects=objects, jobs=jobs)
                 for index, item in enumerate(request.inputs)]
    except BaseException:
        discard_inputs(objects, job_id)
        raise
    now = utcnow()
    return JobRecord(id=job_id, tenant_id=principal.tenant_id,
                     api_key_id=principal.key_id, status=JobStatus.queued, model=model,
                     prompt=request.prompt,
                     generation=request.generation, media_options=request.media_options,
                     media=media, webhook_url=request.webhook_url,
                     webhook_events=request.webhook_events,
                     json_schema=request.json_schema,
                     previous_job_id=request.previous_job_id,
                     metadata=request.metadata, priority=request.priority,
                     deadline_at=(now + timedelta(seconds=request.queue_ttl_seconds)
                                  if request.queue_ttl_seconds else None),
                     retention_seconds=_retention(request, settings),
                     timeout_seconds=request.timeout_seconds,
                     trace_id=current_trace_id(), times=StageTimes(created_at=now),
                     updated_at=now)


def discard_inputs(objects: ObjectStore, job_id: str) -> None:
    """Delete what was stored for a job that will not be created (best effort: the error that
    stopped it is the one to report)."""
    try:
        objects.delete_prefix(JobKeys(job_id).prefix)
    except Exception as error:  # an outage: S3's lifecycle rules remove the orphans
        logger.warning("could not delete the inputs of abandoned job %s: %s", job_id,
                       type(error).__name__)


def queue_or_fail(producer: Celery, jobs: JobStore, record: JobRecord) -> None:
    """Queue a recorded job; if the broker refuses, fail the job rather than leave it queued."""
    try:
        queue_stage(producer, jobs, record, "preprocess")
    except Exception as error:
        message = f"Job {record.id} could not be queued ({type(error).__name__}); submit it again."
        failure = (TesseraError(ErrorCode.service_unavailable, message,
                                retry_after_seconds=RETRY_AFTER_SECONDS)
                   if outage(error) else TesseraError(ErrorCode.internal_error, message))
        jobs.fail(record.id, failure, "ingest")
        raise failure from error


def retry_job(*, original: JobRecord, objects: ObjectStore, jobs: JobStore,
              producer: Celery) -> JobRecord:
    """A new job with a failed, canceled or expired job's request and media."""
    if original.status not in (JobStatus.failed, JobStatus.canceled, JobStatus.expired):
        raise TesseraError(ErrorCode.job_not_retryable,
                           f"Job {original.id} is {original.status}; only failed, canceled or "
                           "expired jobs can be retried.")
    job_id = f"job_{uuid.uuid4().hex}"
    with tracer.start_as_current_span("job.retry", attributes={"job.id": job_id}):
        media = []
        for ref in original.media:
            key = JobKeys(job_id).media(ref.index)
            objects.copy(ref.key, key)
            media.append(ref.model_copy(update={"key": key}))
        now = utcnow()
        ttl = (original.deadline_at - original.times.created_at
               if original.deadline_at else None)
        record = JobRecord(**original.model_dump(include=_REQUEST_FIELDS), id=job_id,
                           status=JobStatus.queued, media=media, retry_of=original.id,
                           deadline_at=now + ttl if ttl else None,
                           trace_id=current_trace_id(), times=StageTimes(created_at=now),
                           updated_at=now)
        jobs.create(record)
        queue_or_fail(producer, jobs, record)
    return record


# What a retry carries over from the original job: the request, not its outcome.
_REQUEST_FIELDS = {"tenant_id", "api_key_id", "model", "prompt", "generation", "media_options",
                   "webhook_url", "webhook_events", "json_schema", "previous_job_id", "metadata",
                   "priority", "retention_seconds", "timeout_seconds"}


def _store_input(item: InputRef, index: int, job_id: str, *,
                 checked: dict[str, "_CheckedUpload"], tenant_id: str, settings: IngestSettings,
                 objects: ObjectStore, jobs: JobStore) -> MediaRef:
    """Put one input where the job's index-th input lives: an attached file, a completed
    direct upload (copied inside S3) or a URL (fetched now)."""
    if isinstance(item, UploadInput):
        return media_ref_from_upload(upload_id=item.upload_id, tenant_id=tenant_id,
                                     job_id=job_id, index=index,
                                     uploads=UploadStore(jobs.redis, settings.KEY_PREFIX),
                                     objects=objects)
    if isinstance(item, UrlInput):
        return media_ref_from_url(url=str(item.url), job_id=job_id, index=index,
                                  objects=objects, settings=settings,
                                  max_bytes=settings.max_bytes)
    upload = checked[item.file]
    key = JobKeys(job_id).media(index)
    upload.upload.file.seek(0)
    objects.put_file(key, upload.upload.file, upload.size, upload.mime)
    return MediaRef(index=index, kind=upload.kind, key=key, filename=upload.upload.filename,
                    content_type=upload.mime, size_bytes=upload.size, sha256=upload.sha256)


def _retention(request: JobCreate, settings: IngestSettings) -> int:
    """How long the job is kept after it ends: as asked, but never shorter than its webhook's
    last retry, which links to the result."""
    asked = request.retention_seconds or settings.RETENTION_SECONDS
    if request.webhook_url is None:
        return asked
    return max(asked, math.ceil(settings.retry_horizon()))


def check_backpressure(jobs: JobStore, new_jobs: dict[str, int],
                       settings: IngestSettings) -> None:
    """Refuse new jobs (so many per model) that would take a model's backlog over its limit
    (never an unbounded queue)."""
    for model, count in new_jobs.items():
        lists = [name for queue in (PREPROCESS_QUEUE, inference_queue(model))
                 for name in priority_lists(queue)]
        with jobs.redis.pipeline() as pipe:
            for name in lists:
                pipe.llen(name)
            waiting = sum(pipe.execute())
        if waiting + count > settings.MAX_QUEUED_JOBS:
            raise TesseraError(ErrorCode.queue_full,
                               f"{waiting} jobs are waiting for {model}; {count} more would "
                               f"pass the limit of {settings.MAX_QUEUED_JOBS}. Retry later.",
                               retry_after_seconds=30)


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
    upload.file.seek(0)  # a batch may name one attached file in several lines
    media_type = sniff_media_type(upload.file.read(SNIFF_BYTES))
    if media_type is None:
        raise TesseraError(ErrorCode.unsupported_media,
                           f"{upload.filename!r} is not a supported image, video or PDF "
                           "(its content was checked, not its name).", filename=upload.filename)
    size = upload.file.seek(0, io.SEEK_END)
    limit = settings.max_bytes(media_type.kind)
    if size > limit:
        raise TesseraError(ErrorCode.media_too_large,
                           f"{upload.filename!r} is {format_size(size)}; a {media_type.kind} may "
                           f"be at most {format_size(limit)}.", filename=upload.filename,
                           limit_bytes=limit)
    upload.file.seek(0)
    digest = hashlib.file_digest(upload.file, "sha256").hexdigest()  # type: ignore[arg-type]
    return _CheckedUpload(upload, media_type.kind, media_type.mime, size, digest)
