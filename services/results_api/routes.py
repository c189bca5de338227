"""HTTP routes of the results API."""

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, StreamingResponse

from services.results_api.deps import JobDep, SettingsDep
from services.results_api.service import event_stream, finished_result
from shared.http_api import JobStoreDep, ObjectStoreDep
from shared.schemas import JobPublic, JobResult

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.get("/jobs/{job_id}", response_model=JobPublic, summary="A job's status, stages and error")
def get_job(job: JobDep, settings: SettingsDep) -> JobPublic:
    """The job object."""
    return JobPublic.from_record(job, settings.PUBLIC_BASE_URL)


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
def get_events(job: JobDep, jobs: JobStoreDep, settings: SettingsDep,
               last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    """Stream every state change, resumable with Last-Event-ID, closing after the last one."""
    stream = event_stream(jobs=jobs, job_id=job.id, last_event_id=last_event_id,
                          poll_seconds=settings.EVENTS_POLL_SECONDS)
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})
