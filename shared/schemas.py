"""Contracts between services: job records, public job views, queue payloads and results."""

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, StringConstraints, model_validator

from shared.errors import ErrorCode


class JobStatus(StrEnum):
    """Where a job is in its lifecycle; clients must treat this set as open."""

    queued = "queued"
    preprocessing = "preprocessing"
    inferring = "inferring"
    succeeded = "succeeded"
    failed = "failed"
    canceling = "canceling"
    canceled = "canceled"
    expired = "expired"

    @property
    def terminal(self) -> bool:
        """True once the job can no longer change."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {JobStatus.succeeded, JobStatus.failed, JobStatus.canceled, JobStatus.expired})

MediaKind = Literal["image", "video", "pdf"]
Stage = Literal["ingest", "preprocess", "inference", "webhook"]
# Which events a job's webhook receives besides the terminal one, which is always sent.
WebhookEventFilter = Literal["started", "progress", "output"]
# Labels a client attaches to a job to filter listings by: stored with every job and returned
# by every listing, so bounded in count and size.
MAX_METADATA_KEYS = 16
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_KEYS)]


class GenerationParams(BaseModel):
    """How the model decodes; temperature 0 means greedy (and then top_p is ignored)."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(default=512, ge=1, le=8192)
    min_new_tokens: int = Field(default=0, ge=0, le=8192)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=2.0)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> "GenerationParams":
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError("min_new_tokens must not exceed max_new_tokens")
        return self

    @property
    def greedy(self) -> bool:
        """True when decoding picks the most likely token at each step."""
        return self.temperature == 0.0


class MediaOptions(BaseModel):
    """How inputs are turned into tiles: image grid bounds, video frames, PDF pages."""

    model_config = ConfigDict(extra="forbid")

    min_tiles: int = Field(default=1, ge=1, le=40)
    max_tiles: int = Field(default=12, ge=1, le=40)
    num_frames: int = Field(default=32, ge=1, le=64)
    start_seconds: float | None = Field(default=None, ge=0)
    end_seconds: float | None = Field(default=None, gt=0)
    first_page: int = Field(default=1, ge=1)
    last_page: int | None = Field(default=None, ge=1)
    dpi: int = Field(default=144, ge=36, le=300)

    @model_validator(mode="after")
    def _ranges_in_order(self) -> "MediaOptions":
        if self.min_tiles > self.max_tiles:
            raise ValueError("min_tiles must not exceed max_tiles")
        if (self.start_seconds is not None and self.end_seconds is not None
                and self.start_seconds >= self.end_seconds):
            raise ValueError("start_seconds must be before end_seconds")
        if self.last_page is not None and self.last_page < self.first_page:
            raise ValueError("last_page must not be before first_page")
        return self


class MediaRef(BaseModel):
    """One uploaded input as stored in S3."""

    index: int
    kind: MediaKind
    key: str
    filename: str
    content_type: str
    size_bytes: int
    sha256: str


Priority = Literal["interactive", "batch"]


class FileInput(BaseModel):
    """An input sent with the request, by the name of its attached file."""

    model_config = ConfigDict(extra="forbid")

    file: str


class UploadInput(BaseModel):
    """An input uploaded beforehand with a presigned URL."""

    model_config = ConfigDict(extra="forbid")

    upload_id: str


class UrlInput(BaseModel):
    """An input the service fetches from an https URL."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl


# One input of a job, in prompt order.
InputRef = FileInput | UploadInput | UrlInput


class JobCreate(BaseModel):
    """What a client asks for, apart from the media itself."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    model: str | None = None
    webhook_url: HttpUrl | None = None
    generation: GenerationParams = Field(default_factory=GenerationParams)
    media_options: MediaOptions = Field(default_factory=MediaOptions)
    webhook_events: list[WebhookEventFilter] = Field(default_factory=list)
    # The job's images, videos and PDFs, in prompt order.
    inputs: list[InputRef] = Field(default_factory=list)
    # Ask for JSON matching this schema (guided decoding where the engine has it).
    json_schema: dict[str, Any] | None = None
    # Continue that job's conversation: its prompt, media and answer become the history.
    previous_job_id: str | None = None
    metadata: Metadata = Field(default_factory=dict)
    priority: Priority = "interactive"
    # A job that has not started within this many seconds ends as expired.
    queue_ttl_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    # How long the job and its result are kept after it ends.
    retention_seconds: int | None = Field(default=None, ge=3600, le=90 * 24 * 3600)
    # A job not finished this many seconds after it was created fails with deadline_exceeded.
    timeout_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)


class BatchLine(JobCreate):
    """One line of a batch JSONL: a job request, its custom_id and its attached files' names
    (which come before any other `inputs`)."""

    custom_id: str = Field(min_length=1, max_length=128)
    files: list[str] = Field(default_factory=list)
    priority: Priority = "batch"

    def job_create(self) -> JobCreate:
        """The job request this line stands for."""
        request = JobCreate.model_validate(self.model_dump(exclude={"custom_id", "files"}))
        request.inputs = [FileInput(file=name) for name in self.files] + request.inputs
        return request


class JobError(BaseModel):
    """Why a job failed, in the shared error vocabulary."""

    code: ErrorCode
    message: str
    retryable: bool
    stage: Stage


class StageTimes(BaseModel):
    """When the job entered and left each stage (UTC)."""

    created_at: datetime
    preprocess_started_at: datetime | None = None
    preprocess_finished_at: datetime | None = None
    inference_started_at: datetime | None = None
    finished_at: datetime | None = None


class JobRecord(BaseModel):
    """The stored job: the one source of truth for status, owned by the job store."""

    id: str
    tenant_id: str
    api_key_id: str
    status: JobStatus
    model: str
    prompt: str
    generation: GenerationParams
    media_options: MediaOptions
    media: list[MediaRef]
    webhook_url: HttpUrl | None = None
    webhook_events: list[WebhookEventFilter] = Field(default_factory=list)
    json_schema: dict[str, Any] | None = None
    previous_job_id: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    priority: Priority = "interactive"
    deadline_at: datetime | None = None
    timeout_seconds: int | None = None
    retention_seconds: int
    retry_of: str | None = None
    trace_id: str | None = None
    attempts: dict[str, int] = Field(default_factory=dict)
    times: StageTimes
    updated_at: datetime
    error: JobError | None = None
    result_key: str | None = None
    # "host/pid" of the process running the current stage: for operators and fault tests.
    worker: str | None = None
    # When the running stage's time budget ends (set when the stage is claimed).
    stage_deadline_at: datetime | None = None

    @property
    def run_deadline_at(self) -> datetime | None:
        """When the job must have finished (its timeout_seconds after creation), if bounded."""
        return (self.times.created_at + timedelta(seconds=self.timeout_seconds)
                if self.timeout_seconds else None)


class JobsPublic(BaseModel):
    """A page of jobs, newest first; pass next_cursor back as `cursor` for the next page."""

    data: list["JobPublic"]
    next_cursor: str | None


class Progress(BaseModel):
    """How far a running job is: inputs prepared, or pieces of output generated."""

    stage: Literal["preprocess", "inference"]
    done: int
    total: int | None


class QueuePosition(BaseModel):
    """A waiting job's place: how many messages are ahead and an estimated start."""

    queue: str
    ahead: int
    estimated_start_at: datetime | None


class JobLinks(BaseModel):
    """Where to find the job, its result and its events."""

    self: str
    result: str
    events: str


class JobPublic(BaseModel):
    """The job as clients see it."""

    id: str
    status: JobStatus
    terminal: bool
    model: str
    attempts: dict[str, int]
    times: StageTimes
    error: JobError | None
    trace_id: str | None
    metadata: dict[str, str]
    priority: Priority
    deadline_at: datetime | None
    result_expires_at: datetime | None
    retry_of: str | None
    # For a job waiting in a queue: messages ahead of it and an estimated start.
    queue: "QueuePosition | None" = None
    # For a running job: how far its stage is.
    progress: "Progress | None" = None
    links: JobLinks

    @classmethod
    def from_record(cls, record: "JobRecord", base_url: str) -> "JobPublic":
        """The public view of a stored job, with links under base_url."""
        self_url = f"{base_url.rstrip('/')}/v1/jobs/{record.id}"
        return cls(
            id=record.id, status=record.status, terminal=record.status.terminal,
            model=record.model, attempts=record.attempts, times=record.times,
            error=record.error, trace_id=record.trace_id, metadata=record.metadata,
            priority=record.priority, deadline_at=record.deadline_at, retry_of=record.retry_of,
            result_expires_at=(
                record.times.finished_at + timedelta(seconds=record.retention_seconds)
                if record.times.finished_at else None),
            links=JobLinks(self=self_url, result=f"{self_url}/result", events=f"{self_url}/events"),
        )


class PreprocessTask(BaseModel):
    """Queue payload asking a preprocessing worker to prepare a job's inputs."""

    schema_version: Literal[1] = 1
    job_id: str


class InferenceTask(BaseModel):
    """Queue payload asking an inference worker to answer a prepared job."""

    schema_version: Literal[1] = 1
    job_id: str
    manifest_key: str


class ImageTiling(BaseModel):
    """How one image placeholder in the prompt was tiled (a photo, a video frame or a page)."""

    width: int
    height: int
    cols: int
    rows: int
    thumbnail: bool
    num_tiles: int
    visual_tokens: int
    timestamp_seconds: float | None = None
    page: int | None = None


class PreparedInput(BaseModel):
    """One input after preprocessing: its tiles (one uint8 .npy array in S3) and their layout."""

    index: int
    kind: MediaKind
    tiles_key: str
    images: list[ImageTiling]


class PreparedJob(BaseModel):
    """Everything the inference side needs, written by the preprocessing worker."""

    schema_version: Literal[1] = 1
    job_id: str
    inputs: list[PreparedInput]


class TokenUsage(BaseModel):
    """Tokens the model read and wrote."""

    prompt_tokens: int
    completion_tokens: int
    visual_tokens: int


class StageTimings(BaseModel):
    """Seconds spent in each stage, derived from the job's timestamps."""

    queue_seconds: float
    preprocess_seconds: float
    inference_queue_seconds: float
    inference_seconds: float
    total_seconds: float


class InputSummary(BaseModel):
    """What the model saw of one input."""

    index: int
    kind: MediaKind
    images: list[ImageTiling]


class JobResult(BaseModel):
    """The answer to a job, stored in S3 and served by the results API."""

    job_id: str
    model: str
    text: str
    finish_reason: str
    usage: TokenUsage
    inputs: list[InputSummary]
    timings: StageTimings
    engine: str
    created_at: datetime
    # With a json_schema: the answer parsed as JSON, and whether it matched the schema.
    output_json: Any = None
    json_valid: bool | None = None
    previous_job_id: str | None = None


class TerminalEventData(JobPublic):
    """The data of a terminal webhook event: the job, with its result inline or linked."""

    result: JobResult | None = None
    result_url: str | None = None


class WebhookPayload(BaseModel):
    """The body POSTed to a job's webhook_url (signed per Standard Webhooks)."""

    type: str = Field(description="job.started, job.progress, job.output, job.succeeded, "
                      "job.failed, job.canceled or job.expired")
    timestamp: datetime
    sequence: int = Field(description="Rises with each event of a job: drop lower ones")
    data: TerminalEventData | dict[str, Any] = Field(
        description="Terminal events: the job (and result); others: {id, stage, done, total} "
        "for progress or {id, delta} for output")
