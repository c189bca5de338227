"""HTTP routes of the ingest API."""

from typing import Annotated, Any

from fastapi import APIRouter, Form, Response, UploadFile
from pydantic import ConfigDict, Field, HttpUrl, Json

from services.ingest_api.deps import ProducerDep, SettingsDep
from services.ingest_api.service import Upload, submit_job
from shared.http_api import JobStoreDep, ObjectStoreDep, SubmitterDep
from shared.schemas import (
    GenerationParams,
    JobCreate,
    JobPublic,
    MediaOptions,
    WebhookEventFilter,
)

router = APIRouter(prefix="/v1", tags=["jobs"])


class JobForm(GenerationParams, MediaOptions):
    """The multipart form of POST /v1/jobs: a prompt plus flat generation and media options."""

    model_config = ConfigDict(extra="forbid")

    files: list[UploadFile] = Field(default_factory=list,
                                    description="Images, videos or PDFs, in prompt order")
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

    def to_create(self) -> JobCreate:
        """The structured request this form stands for."""
        fields = self.model_dump(exclude_unset=True, exclude={"files"})
        return JobCreate(
            prompt=self.prompt, model=self.model, webhook_url=self.webhook_url,
            webhook_events=self.webhook_events, json_schema=self.json_schema,
            previous_job_id=self.previous_job_id,
            generation=GenerationParams.model_validate(
                {k: v for k, v in fields.items() if k in GenerationParams.model_fields}),
            media_options=MediaOptions.model_validate(
                {k: v for k, v in fields.items() if k in MediaOptions.model_fields}),
        )


@router.post("/jobs", status_code=202, response_model=JobPublic,
             summary="Submit media and a prompt; answers at once with the queued job")
def create_job(form: Annotated[JobForm, Form()], response: Response, principal: SubmitterDep,
               settings: SettingsDep, objects: ObjectStoreDep, jobs: JobStoreDep,
               producer: ProducerDep) -> JobPublic:
    """Accept a job: 202 with the job object and its Location."""
    record = submit_job(request=form.to_create(),
                        uploads=[Upload(item.filename or f"file-{i}", item.file)
                                 for i, item in enumerate(form.files)],
                        principal=principal, settings=settings, objects=objects, jobs=jobs,
                        producer=producer)
    job = JobPublic.from_record(record, settings.PUBLIC_BASE_URL)
    response.headers["Location"] = job.links.self
    return job
