"""Batch submission: a JSONL of requests, each with a custom_id and the names of its files."""

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from celery import Celery
from opentelemetry import trace
from pydantic import ValidationError

from services.ingest_api.config import IngestSettings
from services.ingest_api.service import (
    Upload,
    check_backpressure,
    discard_inputs,
    new_job_id,
    prepare_job,
    queue_or_fail,
    validate_request,
)
from shared.auth import Principal
from shared.batch_store import BatchItem, BatchRecord, BatchStore
from shared.errors import ErrorCode, TesseraError
from shared.job_store import JobStore, utcnow
from shared.object_store import ObjectStore
from shared.schemas import BatchLine, JobRecord

tracer = trace.get_tracer(__name__)


def submit_batch(*, lines: BinaryIO, files: list[Upload], principal: Principal,
                 settings: IngestSettings, objects: ObjectStore, jobs: JobStore,
                 producer: Celery) -> BatchRecord:
    """All or nothing: every line is validated (files, uploads, URLs, the queue limit) and
    every line's inputs are stored before any job exists; a line that fails deletes what the
    others stored and names itself. Then the jobs and the batch are recorded and queued."""
    requests = _parse_lines(lines, settings.MAX_BATCH_LINES)
    by_name = _by_name(files)
    validated = []
    for number, line in requests:
        request = line.job_create()
        with _naming_line(number):
            model, checked = validate_request(request, by_name, principal=principal,
                                              settings=settings, jobs=jobs)
        validated.append((number, line.custom_id, request, model, checked))
    check_backpressure(jobs, Counter(model for _, _, _, model, _ in validated), settings)
    prepared: list[tuple[str, JobRecord]] = []
    with tracer.start_as_current_span("batch.submit", attributes={"batch.size": len(requests)}):
        try:
            for number, custom_id, request, model, checked in validated:
                with _naming_line(number):
                    prepared.append((custom_id, prepare_job(new_job_id(), request, checked,
                                                            model, principal, settings,
                                                            objects, jobs)))
        except BaseException:
            for _, record in prepared:
                discard_inputs(objects, record.id)
            raise
        for _, record in prepared:
            jobs.create(record)
        batch = BatchRecord(id=f"batch_{uuid.uuid4().hex}", tenant_id=principal.tenant_id,
                            created_at=utcnow(),
                            items=[BatchItem(custom_id=custom_id, job_id=record.id)
                                   for custom_id, record in prepared])
        BatchStore(jobs).create(batch)
        for _, record in prepared:
            queue_or_fail(producer, jobs, record)
    return batch


@contextmanager
def _naming_line(number: int) -> Iterator[None]:
    """Refusals raised inside say which line of the JSONL they are about."""
    try:
        yield
    except TesseraError as error:
        raise TesseraError(error.code, f"Line {number}: {error.message}",
                           **{**error.details, "line": number}) from None


def _by_name(files: list[Upload]) -> dict[str, Upload]:
    """The attached files by name; lines name their files, so names must be unique."""
    by_name: dict[str, Upload] = {}
    for upload in files:
        if upload.filename in by_name:
            raise TesseraError(ErrorCode.invalid_request,
                               f"Two attached files are named {upload.filename!r}; lines refer "
                               "to files by name, so give each file its own name.",
                               filename=upload.filename)
        by_name[upload.filename] = upload
    return by_name


def _parse_lines(source: BinaryIO, limit: int) -> list[tuple[int, BatchLine]]:
    """The JSONL's requests with their line numbers; custom_ids must be unique."""
    parsed: list[tuple[int, BatchLine]] = []
    seen: set[str] = set()
    for number, raw in enumerate(source, start=1):
        if not raw.strip():
            continue
        try:
            line = BatchLine.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as error:
            raise TesseraError(ErrorCode.invalid_request,
                               f"Line {number} is not a valid request: {error}",
                               line=number) from None
        if line.custom_id in seen:
            raise TesseraError(ErrorCode.invalid_request,
                               f"Line {number} repeats custom_id {line.custom_id!r}.",
                               line=number)
        seen.add(line.custom_id)
        parsed.append((number, line))
        if len(parsed) > limit:
            raise TesseraError(ErrorCode.invalid_request,
                               f"A batch holds at most {limit} requests; split the file.")
    if not parsed:
        raise TesseraError(ErrorCode.invalid_request, "The batch file has no requests.")
    return parsed
