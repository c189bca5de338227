"""The one error model: stable codes, their HTTP status and default message, one exception type."""

from enum import StrEnum
from typing import NamedTuple


class ErrorCode(StrEnum):
    """Stable machine-readable error codes, shared by the APIs and written into failed jobs."""

    # Request problems, answered by the APIs before a job exists.
    invalid_request = "invalid_request"
    unsupported_media = "unsupported_media"
    media_too_large = "media_too_large"
    too_many_files = "too_many_files"
    unknown_model = "unknown_model"
    job_not_found = "job_not_found"
    job_failed = "job_failed"
    unauthorized = "unauthorized"
    forbidden = "forbidden"
    rate_limited = "rate_limited"
    queue_full = "queue_full"
    idempotency_key_reused = "idempotency_key_reused"
    idempotency_key_in_progress = "idempotency_key_in_progress"
    result_gone = "result_gone"
    job_not_cancelable = "job_not_cancelable"
    job_not_retryable = "job_not_retryable"
    batch_not_found = "batch_not_found"
    webhook_event_not_found = "webhook_event_not_found"
    url_not_allowed = "url_not_allowed"
    url_fetch_failed = "url_fetch_failed"
    upload_not_found = "upload_not_found"
    upload_not_ready = "upload_not_ready"
    upload_verification_failed = "upload_verification_failed"
    not_found = "not_found"
    method_not_allowed = "method_not_allowed"
    malformed_request = "malformed_request"
    request_timeout = "request_timeout"
    service_unavailable = "service_unavailable"
    # Job failures, written by the worker that failed the job.
    decode_failed = "decode_failed"
    media_limits_exceeded = "media_limits_exceeded"
    context_overflow = "context_overflow"
    engine_error = "engine_error"
    out_of_memory = "out_of_memory"
    worker_lost = "worker_lost"
    canceled_by_user = "canceled_by_user"
    deadline_exceeded = "deadline_exceeded"
    stage_timeout = "stage_timeout"
    internal_error = "internal_error"


class ErrorInfo(NamedTuple):
    """How one code is answered over HTTP, and whether a retry of the same job may succeed."""

    http_status: int
    message: str
    retryable: bool


ERRORS: dict[ErrorCode, ErrorInfo] = {
    ErrorCode.invalid_request: ErrorInfo(422, "The request is not valid.", False),
    ErrorCode.unsupported_media: ErrorInfo(
        415, "The file type is not supported: send JPEG, PNG, WebP, GIF, BMP, TIFF, MP4, WebM, "
        "MOV or PDF.", False),
    ErrorCode.media_too_large: ErrorInfo(413, "The upload is larger than the limit.", False),
    ErrorCode.too_many_files: ErrorInfo(413, "The request carries more files than allowed.", False),
    ErrorCode.unknown_model: ErrorInfo(422, "The model is not served here.", False),
    ErrorCode.job_not_found: ErrorInfo(404, "No job has this id.", False),
    ErrorCode.job_failed: ErrorInfo(409, "The job failed; it has no result.", False),
    ErrorCode.unauthorized: ErrorInfo(
        401, "Send a valid API key as `Authorization: Bearer <key>`.", False),
    ErrorCode.forbidden: ErrorInfo(403, "This API key lacks the scope this call needs.", False),
    ErrorCode.rate_limited: ErrorInfo(
        429, "Too many requests for this API key; retry after the Retry-After seconds.", True),
    ErrorCode.queue_full: ErrorInfo(
        503, "The model's queue is full; retry after the Retry-After seconds.", True),
    ErrorCode.idempotency_key_reused: ErrorInfo(
        422, "This Idempotency-Key was used with a different request; use a new key.", False),
    ErrorCode.idempotency_key_in_progress: ErrorInfo(
        409, "A request with this Idempotency-Key is still being accepted; retry shortly.", True),
    ErrorCode.result_gone: ErrorInfo(
        410, "The job's data was deleted when its retention period ended.", False),
    ErrorCode.job_not_cancelable: ErrorInfo(409, "The job has already ended.", False),
    ErrorCode.batch_not_found: ErrorInfo(404, "No batch has this id.", False),
    ErrorCode.url_not_allowed: ErrorInfo(
        422, "The URL is not allowed: use https to a public address.", False),
    ErrorCode.url_fetch_failed: ErrorInfo(422, "The URL could not be fetched.", True),
    ErrorCode.upload_not_found: ErrorInfo(404, "No upload has this id.", False),
    ErrorCode.upload_not_ready: ErrorInfo(
        409, "The upload is not ready: complete it and wait for its probe.", True),
    ErrorCode.upload_verification_failed: ErrorInfo(
        422, "The uploaded object does not match the declared size or sha256.", False),
    ErrorCode.webhook_event_not_found: ErrorInfo(404, "The job has no webhook event with this id.",
                                                 False),
    ErrorCode.not_found: ErrorInfo(404, "No endpoint has this path; see /openapi.json.", False),
    ErrorCode.method_not_allowed: ErrorInfo(
        405, "This endpoint does not answer this HTTP method; see the Allow header.", False),
    ErrorCode.malformed_request: ErrorInfo(
        400, "The request body could not be parsed as its Content-Type says.", False),
    ErrorCode.request_timeout: ErrorInfo(
        408, "The request body arrived too slowly; send it again on a faster connection.", True),
    ErrorCode.service_unavailable: ErrorInfo(
        503, "A service Tessera depends on is unavailable; retry after the Retry-After seconds.",
        True),
    ErrorCode.job_not_retryable: ErrorInfo(
        409, "Only failed, canceled or expired jobs can be retried.", False),
    ErrorCode.decode_failed: ErrorInfo(
        422, "The file could not be decoded; check that it is complete and not corrupt.", False),
    ErrorCode.media_limits_exceeded: ErrorInfo(
        422, "The media exceeds a processing limit (pixels, pages, duration or aspect ratio).",
        False),
    ErrorCode.context_overflow: ErrorInfo(
        422, "Prompt and media do not fit the model's context; send fewer tiles, frames or "
        "pages.", False),
    ErrorCode.engine_error: ErrorInfo(500, "The inference engine failed.", True),
    ErrorCode.out_of_memory: ErrorInfo(503, "The inference engine ran out of memory.", True),
    ErrorCode.worker_lost: ErrorInfo(
        500, "The worker running the job was lost too many times.", True),
    ErrorCode.canceled_by_user: ErrorInfo(409, "The job was canceled.", False),
    ErrorCode.deadline_exceeded: ErrorInfo(
        504, "The job did not finish before its deadline.", True),
    ErrorCode.stage_timeout: ErrorInfo(
        504, "A stage ran past its time budget (the worker was stuck or the job is too big).",
        True),
    ErrorCode.internal_error: ErrorInfo(500, "An internal error occurred.", True),
}


def format_size(size: int) -> str:
    """A byte count as messages show it: exact, with a binary unit when that is shorter."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size:,} bytes ({size / scale:.4g} {unit})"
    return f"{size:,} bytes"


class TesseraError(Exception):
    """An error with a stable code; `message` tells a person what to do about it."""

    def __init__(self, code: ErrorCode, message: str | None = None, **details: object) -> None:
        self.code = code
        self.message = message or ERRORS[code].message
        self.details = details
        super().__init__(f"{code}: {self.message}")

    @property
    def http_status(self) -> int:
        """The HTTP status this error is answered with."""
        return ERRORS[self.code].http_status

    @property
    def retryable(self) -> bool:
        """Whether the same job may succeed if tried again."""
        return ERRORS[self.code].retryable


class JobCanceled(Exception):
    """Raised at a safe point when the job being worked on was canceled by its owner."""
