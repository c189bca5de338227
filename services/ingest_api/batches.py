"""Batch submission: a JSONL of requests, each with a custom_id and the names of its files."""

import json
import uuid
from typing import BinaryIO

from celery import Celery
from pydantic import ValidationError

from services.ingest_api.config import IngestSettings
from services.ingest_api.service import Upload, accept_job, validate_request
from shared.auth import Principal
from shared.batch_store import BatchItem, BatchRecord, BatchStore
from shared.errors import ErrorCode, TesseraError
from shared.job_store import JobStore, utcnow
from shared.object_store import ObjectStore
from shared.schemas import BatchLine


def submit_batch(*, lines: BinaryIO, files: list[Upload], principal: Principal,
                 settings: IngestSettings, objects: ObjectStore, jobs: JobStore,
                 producer: Celery) -> BatchRecord:
    """Validate every line first (nothing is stored if one is wrong), then create the jobs."""
    requests = _parse_lines(lines, settings.MAX_BATCH_LINES)
    by_name = {upload.filename: upload for upload in files}
    validated = []
    for number, line in requests:
        request = line.job_create()
        try:
            model, checked = validate_request(request, by_name, principal=principal,
                                              settings=settings, jobs=jobs)
        except TesseraError as error:
            raise TesseraError(error.code, f"Line {number}: {error.message}",
                               line=number) from None
        validated.append((line.custom_id, request, model, checked))
    items = [BatchItem(custom_id=custom_id,
                       job_id=accept_job(request, checked, model, principal, settings, objects,
                                         jobs, producer).id)
             for custom_id, request, model, checked in validated]
    batch = BatchRecord(id=f"batch_{uuid.uuid4().hex}", tenant_id=principal.tenant_id,
                        created_at=utcnow(), items=items)
    BatchStore(jobs).create(batch)
    return batch


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
