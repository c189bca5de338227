"""HTTP routes of the results API."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import WithJsonSchema

from services.results_api.deps import SettingsDep
from services.results_api.service import batch_result_lines, event_stream, finished_result
from shared.batch_store import BatchPublic, BatchRecord, BatchStore, batch_public
from shared.errors import ErrorCode, TesseraError
from shared.http_api import JobDep, JobStoreDep, JobWaitsDep, ObjectStoreDep, ReaderDep
from shared.job_store import JobFilter
from shared.job_waits import EVENT_ID_PATTERN, MAX_WAIT_SECONDS
from shared.queue_position import queue_position, waiting_queue
from shared.schemas import JobPublic, JobResult, JobsPublic, JobStatus

router = APIRouter(prefix="/v1", tags=["jobs"])
# A time in a query: ISO 8601, or Unix seconds (pydantic reads both, so the document says so).
Instant = Annotated[datetime, WithJsonSchema(
    {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "number"}]})]
# The cursors list_jobs hands out: a creation time in seconds (float() also reads "nan",
# "inf" and "1_0", which Redis refuses).
CURSOR_PATTERN = r"^[0-9]{1,12}(\.[0-9]{1,9})?$"


@router.get("/jobs", response_model=JobsPublic, summary="The caller's jobs, newest first")
def list_jobs(principal: ReaderDep, jobs: JobStoreDep, settings: SettingsDep,
              status: Annotated[list[JobStatus] | None, Query()] = None,
              model: str | None = None,
              created_after: Instant | None = None, created_before: Instant | None = None,
              metadata: Annotated[list[str] | None, Query(
                  description="key=value; repeat to require several")] = None,
              limit: Annotated[int, Query(ge=1, le=200)] = 50,
              cursor: Annotated[str | None, Query(
                  pattern=CURSOR_PATTERN, max_length=32,
                  description="next_cursor of the previous page")] = None) -> JobsPublic:
    """A page of jobs matching the filters; follow `next_cursor` for more."""
    where = JobFilter(statuses=frozenset(status or ()), model=model,
                      created_after=created_after, created_before=created_before,
                      metadata=tuple(_pair(item) for item in metadata or ()))
    try:
        records, next_cursor = jobs.list_jobs(principal.tenant_id, where, limit=limit,
                                              cursor=cursor)
    except ValueError:
        raise TesseraError(ErrorCode.invalid_request,
                           "cursor must be a next_cursor value from an earlier page.") from None
    return JobsPublic(data=[JobPublic.from_record(record, settings.PUBLIC_BASE_URL)
                            for record in records], next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobPublic, summary="A job's status, stages and error")
def get_job(job: JobDep, jobs: JobStoreDep, waits: JobWaitsDep, settings: SettingsDep,
            wait: Annotated[float | None, Query(
                ge=0, le=MAX_WAIT_SECONDS, description=f"Long-poll: wait up to this many "
                f"seconds (at most {MAX_WAIT_SECONDS:g}) for the job to end")] = None,
            ) -> JobPublic:
    """The job object (with its queue position while it waits), after waiting for it to end
    when `wait` is given."""
    record = waits.until_finished(job, wait) if wait else job
    public = JobPublic.from_record(record, settings.PUBLIC_BASE_URL)
    waiting_in = waiting_queue(record)
    if waiting_in is not None:
        public.queue = queue_position(jobs.redis, waiting_in, record.id)
    elif record.status in (JobStatus.preprocessing, JobStatus.inferring):
        public.progress = jobs.progress(record.id)
    return public


@router.get("/jobs/{job_id}/result", response_model=JobResult,
            responses={202: {"model": JobPublic, "description": "The job has not finished yet."}},
            summary="A job's result: 202 while it runs")
def get_result(job: JobDep, objects: ObjectStoreDep,
               settings: SettingsDep) -> JobResult | JSONResponse:
    """The result when the job succeeded, 202 with the job while it runs."""
    result = finished_result(record=job, objects=objects)
    if result is None:
        running = JobPublic.from_record(job, settings.PUBLIC_BASE_URL)
        return JSONResponse(running.model_dump(mode="json"), status_code=202,
                            headers={"Retry-After": "1"})
    return result


@router.get("/jobs/{job_id}/events", summary="Server-sent events of a job's state changes",
            response_class=StreamingResponse)
def get_events(job: JobDep, waits: JobWaitsDep, settings: SettingsDep,
               last_event_id: Annotated[str | None, Header(
                   pattern=EVENT_ID_PATTERN,
                   description="Resume after this event id (the `id:` of an event)")] = None,
               ) -> StreamingResponse:
    """Stream every state change, resumable with Last-Event-ID, closing after the last one;
    a comment line every EVENTS_KEEPALIVE_SECONDS keeps idle connections open."""
    stream = event_stream(waits=waits, job_id=job.id, last_event_id=last_event_id,
                          keepalive_seconds=settings.EVENTS_KEEPALIVE_SECONDS)
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def _pair(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise TesseraError(ErrorCode.invalid_request,
                           f"metadata filter {item!r} must look like key=value.")
    return key, value


def valid_batch(batch_id: str, jobs: JobStoreDep, principal: ReaderDep) -> BatchRecord:
    """The caller's batch in the path, or 404 (also for other tenants' batches)."""
    batch = BatchStore(jobs).get(batch_id)
    if batch is None or batch.tenant_id != principal.tenant_id:
        raise TesseraError(ErrorCode.batch_not_found, f"No batch has the id {batch_id!r}.")
    return batch


BatchDep = Annotated[BatchRecord, Depends(valid_batch)]


@router.get("/batches/{batch_id}", response_model=BatchPublic, tags=["batches"],
            summary="A batch's counters: how many of its jobs are in each state")
def get_batch(batch: BatchDep, jobs: JobStoreDep, settings: SettingsDep) -> BatchPublic:
    """The batch with its counters."""
    return batch_public(batch, BatchStore(jobs).jobs_of(batch), settings.PUBLIC_BASE_URL)


@router.get("/batches/{batch_id}/results", tags=["batches"], response_class=StreamingResponse,
            summary="JSONL of the batch's finished jobs, keyed by custom_id (partial while "
            "the batch runs)")
def get_batch_results(batch: BatchDep, jobs: JobStoreDep,
                      objects: ObjectStoreDep) -> StreamingResponse:
    """One line per finished job: custom_id, job_id, status, and result or error."""
    items = BatchStore(jobs).jobs_of(batch)
    return StreamingResponse(batch_result_lines(items, objects),
                             media_type="application/x-ndjson")
