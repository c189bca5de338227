"""Jobs in the OpenAI chat-message shape: text, image_url, video_url and file parts."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from services.ingest_api.data_urls import DataUrlSpool
from services.ingest_api.service import Upload
from shared.errors import ErrorCode, TesseraError
from shared.schemas import (
    FileInput,
    GenerationParams,
    InputRef,
    JobCreate,
    MediaOptions,
    Metadata,
    Priority,
    UploadInput,
    UrlInput,
    WebhookEventFilter,
)

# Messages of one body, and parts of one message: more cannot make a valid job (one user
# message, at most MAX_FILES media parts) and each is held in memory while parsing.
MAX_MESSAGES = 32
MAX_PARTS = 128


class MediaUrl(BaseModel):
    """`{"url": ...}`: an https URL or a base64 `data:` URL."""

    url: str = Field(max_length=8192)


class FileRef(BaseModel):
    """`{"file_id": ...}` (a completed upload) or `{"file_data": ..., "filename": ...}`."""

    file_id: str | None = Field(default=None, max_length=128)
    file_data: str | None = None
    filename: str | None = Field(default=None, max_length=255)


class ContentPart(BaseModel):
    """One part of a message's content."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "image_url", "video_url", "file"]
    text: str | None = None
    image_url: MediaUrl | None = None
    video_url: MediaUrl | None = None
    file: FileRef | None = None


class ChatMessage(BaseModel):
    """A chat message; content is a string or a list of parts."""

    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart] = Field(max_length=MAX_PARTS)


class ResponseFormat(BaseModel):
    """OpenAI's response_format: JSON by schema, or any JSON object."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatJobCreate(BaseModel):
    """The body of POST /v1/chat/jobs: OpenAI chat fields plus Tessera's job options."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=8192)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    response_format: ResponseFormat | None = None
    metadata: Metadata = Field(default_factory=dict)
    webhook_url: HttpUrl | None = None
    webhook_events: list[WebhookEventFilter] = Field(default_factory=list)
    priority: Priority = "interactive"
    queue_ttl_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    retention_seconds: int | None = Field(default=None, ge=3600, le=90 * 24 * 3600)
    previous_job_id: str | None = None
    media_options: MediaOptions = Field(default_factory=MediaOptions)


def chat_to_job(body: ChatJobCreate,
                data_urls: DataUrlSpool) -> tuple[JobCreate, dict[str, Upload]]:
    """The job request a chat body stands for, and the files its data URLs carried (decoded
    while the body was read, see data_urls.py).

    System text goes before the question; the user message's parts keep their order as the
    job's inputs. Earlier turns of a conversation are continued with previous_job_id.
    """
    system = [_text_of(message) for message in body.messages if message.role == "system"]
    turns = [message for message in body.messages if message.role != "system"]
    if len(turns) != 1 or turns[0].role != "user":
        raise TesseraError(ErrorCode.invalid_request,
                           "Send one user message (after any system messages); to continue a "
                           "conversation, pass the earlier job as previous_job_id.")
    parts = (turns[0].content if isinstance(turns[0].content, list)
             else [ContentPart(type="text", text=turns[0].content)])
    texts, inputs, files = [], [], {}
    for position, part in enumerate(parts):
        if part.type == "text":
            texts.append(part.text or "")
            continue
        item, upload = _input_of(part, position, data_urls)
        inputs.append(item)
        if upload is not None and isinstance(item, FileInput):
            files[item.file] = upload
    generation = GenerationParams(
        max_new_tokens=body.max_completion_tokens or body.max_tokens or 512,
        temperature=body.temperature or 0.0, top_p=body.top_p or 1.0, seed=body.seed)
    request = JobCreate(
        prompt="\n".join([*system, *texts]).strip() or " ", model=body.model,
        webhook_url=body.webhook_url, webhook_events=body.webhook_events,
        generation=generation, media_options=body.media_options, inputs=inputs,
        json_schema=_json_schema(body.response_format), previous_job_id=body.previous_job_id,
        metadata=body.metadata, priority=body.priority,
        queue_ttl_seconds=body.queue_ttl_seconds, retention_seconds=body.retention_seconds)
    return request, files


def _input_of(part: ContentPart, position: int,
              data_urls: DataUrlSpool) -> tuple[InputRef, Upload | None]:
    """A non-text part as a job input (and the file a data URL or file_data carried)."""
    media = part.image_url or part.video_url
    if media is not None:
        return _url_input(media.url, f"part-{position}", None, data_urls)
    if part.file is not None and part.file.file_id is not None:
        return UploadInput(upload_id=part.file.file_id), None
    if part.file is not None and part.file.file_data is not None:
        return _url_input(part.file.file_data, f"part-{position}", part.file.filename,
                          data_urls)
    raise TesseraError(ErrorCode.invalid_request,
                       f"Content part {position} ({part.type}) carries no media: give its "
                       "url, file_id or file_data.")


def _url_input(url: str, key: str, filename: str | None,
               data_urls: DataUrlSpool) -> tuple[InputRef, Upload | None]:
    """An https URL as a URL input; decoded base64 as an attached file named by its part."""
    if not data_urls.is_reference(url):
        if url.startswith("data:"):
            raise TesseraError(ErrorCode.invalid_request,
                               f"The data URL of {key} must be base64 (`data:<type>;base64,`).")
        return UrlInput(url=HttpUrl(url)), None
    decoded = data_urls.files[url]
    if decoded.invalid is not None:
        raise TesseraError(ErrorCode.invalid_request,
                           f"The data URL of {key} is not valid base64: {decoded.invalid}.")
    return FileInput(file=key), Upload(filename or key, decoded.file)


def _text_of(message: ChatMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    return "\n".join(part.text or "" for part in message.content if part.type == "text")


def _json_schema(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {"type": "object"}
    wrapper = response_format.json_schema or {}
    schema = wrapper.get("schema", wrapper)
    if not isinstance(schema, dict):
        raise TesseraError(ErrorCode.invalid_request,
                           "response_format.json_schema.schema must be a JSON Schema object.")
    return schema
