"""HTTP routes of the ingest API."""

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Request, Response, UploadFile
from pydantic import ConfigDict, Field, HttpUrl, Json

from services.ingest_api.batches import submit_batch
from services.ingest_api.chat_input import ChatJobCreate, chat_to_job
from services.ingest_api.config import IngestSettings
from services.ingest_api.data_urls import DataUrlRoute
from services.ingest_api.deps import ProducerDep, SettingsDep
from services.ingest_api.service import Submission, Upload, retry_job, submit_job
from shared.batch_store import BatchPublic, BatchStore, batch_public
from shared.errors import ErrorCode, TesseraError
from shared.http_api import JobStoreDep, JobWaitsDep, ObjectStoreDep, OwnJobDep, SubmitterDep
from shared.job_waits import JobWaits, preferred_wait
from shared.outages import OUTAGE_ERRORS
from shared.run_timeout import with_cancel_after
from shared.schemas import (
    FileInput,
    GenerationParams,
    JobCreate,
    JobPublic,
    MediaOptions,
    Metadata,
    Priority,
    UploadInput,
    UrlInput,
    WebhookEventFilter,
)
from shared.webhook_events import TERMINAL_EVENTS, queue_event

router = APIRouter(prefix="/v1", tags=["jobs"])
# Chat bodies carry media as base64: decoded to temporary files while they stream in.
chat_router = APIRouter(prefix="/v1", tags=["jobs"], route_class=DataUrlRoute)
# Replicate's deadline header: fail the job with deadline_exceeded after this long from creation.
CancelAfterHeader = Annotated[str | None, Header(
    max_length=32, description="A duration such as 90, 45s, 5m or 1h30m: the job fails with "
    "deadline_exceeded if it has not finished that long after it was created")]


def form_file_name(index: int) -> str:
    """How a job request names the index-th file of a multipart form (names may repeat)."""
    return f"#{index}"


class JobForm(GenerationParams, MediaOptions):
    """The multipart form of POST /v1/jobs: a prompt plus flat generation and media options."""

    model_config = ConfigDict(extra="forbid")

    files: list[UploadFile] = Field(default_factory=list,
                                    description="Images, videos or PDFs, in prompt order")
    upload_ids: list[str] = Field(
        default_factory=list, description="Completed direct uploads (after the files)")
    media_urls: list[HttpUrl] = Field(
        default_factory=list, description="https URLs the service fetches (after the uploads)")
    prompt: str
    model: str | None = None
    webhook_url: HttpUrl | None = None
    webhook_events: list[WebhookEventFilter] = Field(
        default_factory=list,
        description="Extra webhook events: started, progress, output (completion is always sent)")
    json_schema: Json[dict[str, Any]] | None = Field(
        default=None, description="A JSON Schema (as a JSON string) the answer must match")
    previous_job_id: str | None = Field(
        default=None, description="A succeeded job whose conversation this job continues")
    metadata: Json[Metadata] | None = Field(
        default=None, description="A JSON object of up to 16 string pairs to filter listings "
        "by: keys of 1-64 characters, values of up to 512")
    priority: Priority = "interactive"
    queue_ttl_seconds: int | None = Field(
        default=None, ge=1, description="End the job as expired if it has not started by then")
    retention_seconds: int | None = Field(
        default=None, ge=3600, description="How long the job and result are kept after it ends")
    timeout_seconds: int | None = Field(
        default=None, ge=1, le=7 * 24 * 3600,
        description="Fail the job with deadline_exceeded if it has not finished this many "
        "seconds after it was created")

    def to_create(self) -> JobCreate:
        """The structured request this form stands for."""
        fields = self.model_dump(exclude_unset=True,
                                 exclude={"files", "upload_ids", "media_urls"})
        return JobCreate(
            prompt=self.prompt, model=self.model, webhook_url=self.webhook_url,
            webhook_events=self.webhook_events, json_schema=self.json_schema,
            inputs=[*(FileInput(file=form_file_name(i)) for i in range(len(self.files))),
                    *(UploadInput(upload_id=upload_id) for upload_id in self.upload_ids),
                    *(UrlInput(url=url) for url in self.media_urls)],
            previous_job_id=self.previous_job_id, metadata=self.metadata or {},
            priority=self.priority, queue_ttl_seconds=self.queue_ttl_seconds,
            retention_seconds=self.retention_seconds, timeout_seconds=self.timeout_seconds,
            generation=GenerationParams.model_validate(
                {k: v for k, v in fields.items() if k in GenerationParams.model_fields}),
            media_options=MediaOptions.model_validate(
                {k: v for k, v in fields.items() if k in MediaOptions.model_fields}),
        )


@router.post("/jobs", status_code=202, response_model=JobPublic,
             summary="Submit media and a prompt; answers at once with the queued job",
             responses={200: {"model": JobPublic,
                              "description": "Finished within `Prefer: wait=N`."}})
def create_job(form: Annotated[JobForm, Form(media_type="multipart/form-data")],
               response: Response, principal: SubmitterDep,
               settings: SettingsDep, objects: ObjectStoreDep, jobs: JobStoreDep,
               waits: JobWaitsDep, producer: ProducerDep,
               idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
               prefer: Annotated[str | None, Header()] = None,
               cancel_after: CancelAfterHeader = None) -> JobPublic:
    """Accept a job: 202 with the job object and its Location (200 if it finished within
    `Prefer: wait=N`); a repeated Idempotency-Key returns the first request's job."""
    submission = submit_job(request=with_cancel_after(form.to_create(), cancel_after),
                            files={form_file_name(i): Upload(item.filename or f"file-{i}",
                                                             item.file)
                                   for i, item in enumerate(form.files)},
                            principal=principal, idempotency_key=idempotency_key,
                            settings=settings, objects=objects, jobs=jobs, producer=producer)
    return _answer(submission, prefer, response, waits, settings)


@chat_router.post("/chat/jobs", status_code=202, response_model=JobPublic,
                  summary="Submit a job in the OpenAI chat-message shape",
                  responses={200: {"model": JobPublic,
                                   "description": "Finished within `Prefer: wait=N`."}})
def create_chat_job(body: ChatJobCreate, request: Request, response: Response,
                    principal: SubmitterDep, settings: SettingsDep,
                    objects: ObjectStoreDep, jobs: JobStoreDep,
                    waits: JobWaitsDep, producer: ProducerDep,
                    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
                    prefer: Annotated[str | None, Header()] = None,
                    cancel_after: CancelAfterHeader = None) -> JobPublic:
    """Like POST /v1/jobs, from `messages` with text, image_url, video_url and file parts
    (https or base64 data URLs, or completed uploads as file_id), kept in their order."""
    job, files = chat_to_job(body, request.state.data_urls)
    job = with_cancel_after(job, cancel_after)
    submission = submit_job(request=job, files=files, principal=principal,
                            idempotency_key=idempotency_key, settings=settings,
                            objects=objects, jobs=jobs, producer=producer)
    return _answer(submission, prefer, response, waits, settings)


def _answer(submission: Submission, prefer: str | None, response: Response, waits: JobWaits,
            settings: IngestSettings) -> JobPublic:
    """The accepted job: replay header, `Prefer: wait` honoured (200 when it ended), Location.

    The job exists once this runs: if the wait fails (Redis lost meanwhile), the answer is the
    202 the job already earned, so a client without an Idempotency-Key does not resubmit it.
    """
    record = submission.record
    if submission.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    wait = preferred_wait(prefer)
    if wait is not None:
        try:
            record = waits.until_finished(record, wait)
            response.headers["Preference-Applied"] = f"wait={wait:g}"
        except OUTAGE_ERRORS:
            pass
        if record.status.terminal:
            response.status_code = 200
    job = JobPublic.from_record(record, settings.PUBLIC_BASE_URL)
    response.headers["Location"] = job.links.self
    return job


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic,
             summary="Cancel a job: at once when waiting, at the next safe point when running")
def cancel_job(job: OwnJobDep, jobs: JobStoreDep, producer: ProducerDep,
               settings: SettingsDep) -> JobPublic:
    """The job after the cancel request: `canceled`, or `canceling` while its worker stops."""
    transition = jobs.request_cancel(job.id)
    record = transition.record
    if not transition.changed and record.status.terminal:
        raise TesseraError(ErrorCode.job_not_cancelable,
                           f"Job {job.id} already ended as {record.status}.")
    if record.status.terminal:  # canceled while waiting: no worker will send its webhook
        queue_event(producer, jobs.redis, settings.KEY_PREFIX, record,
                    TERMINAL_EVENTS[record.status], {})
    return JobPublic.from_record(record, settings.PUBLIC_BASE_URL)


@router.post("/jobs/{job_id}/retry", status_code=202, response_model=JobPublic,
             summary="Run a failed, canceled or expired job again, as a new job")
def retry(job: OwnJobDep, response: Response, settings: SettingsDep,
          objects: ObjectStoreDep, jobs: JobStoreDep, producer: ProducerDep) -> JobPublic:
    """The new job (its `retry_of` names the original), with its Location."""
    record = retry_job(original=job, objects=objects, jobs=jobs, producer=producer)
    public = JobPublic.from_record(record, settings.PUBLIC_BASE_URL)
    response.headers["Location"] = public.links.self
    return public


@router.post("/batches", status_code=202, response_model=BatchPublic, tags=["batches"],
             summary="Submit many jobs at once: a JSONL of requests plus their files")
def create_batch(requests: Annotated[UploadFile, File(
                     description="JSONL, one request a line: custom_id, prompt, files "
                     "(names of attached files) and any job option")],
                 principal: SubmitterDep, settings: SettingsDep, objects: ObjectStoreDep,
                 jobs: JobStoreDep, producer: ProducerDep, response: Response,
                 files: Annotated[list[UploadFile] | None, File()] = None) -> BatchPublic:
    """Validate every line, then create one job per line (batch priority unless a line says)."""
    batch = submit_batch(lines=requests.file,
                         files=[Upload(item.filename or f"file-{i}", item.file)
                                for i, item in enumerate(files or [])],
                         principal=principal, settings=settings, objects=objects, jobs=jobs,
                         producer=producer)
    public = batch_public(batch, BatchStore(jobs).jobs_of(batch), settings.PUBLIC_BASE_URL)
    response.headers["Location"] = f"{settings.PUBLIC_BASE_URL.rstrip('/')}/v1/batches/{batch.id}"
    return public
