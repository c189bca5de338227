"""Typed errors for Tessera's problem+json answers, each carrying the stable `code`."""

from typing import Any

import httpx


class TesseraError(Exception):
    """Base of every error this client raises."""


class APIError(TesseraError):
    """The API answered with an error: `status`, the stable `code`, `detail` and the whole body."""

    def __init__(self, status: int, code: str, detail: str,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.body = body or {}


class AuthenticationError(APIError):
    """The API key is missing, unknown, or lacks the scope (`unauthorized`, `forbidden`)."""


class InvalidRequestError(APIError):
    """The request was refused as it stands (bad fields, media type or size, unknown model)."""


class JobNotFoundError(APIError):
    """No job with this id belongs to the caller (`job_not_found`)."""


class JobNotFinishedError(APIError):
    """The job has no result yet (the results API answered 202); `body` is the job."""


class JobFailedError(APIError):
    """The job ended without a result (`job_failed`); `job_error` says why."""

    @property
    def job_error(self) -> dict[str, Any] | None:
        """The job's own error: `{code, message, retryable, stage}`."""
        error: dict[str, Any] | None = self.body.get("job_error")
        return error


class ConflictError(APIError):
    """The job is in a state that forbids the call (e.g. `job_not_cancelable`)."""


class RetryLaterError(APIError):
    """A transient refusal (`rate_limited`, `queue_full`, `service_unavailable`,
    `request_timeout`); wait `retry_after` seconds."""

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked to wait, when it said."""
        value = self.body.get("retry_after_seconds")
        return float(value) if value is not None else None


class WaitTimeoutError(TesseraError, TimeoutError):
    """The job did not end within the time given to `wait`."""


_BY_CODE: dict[str, type[APIError]] = {
    "unauthorized": AuthenticationError,
    "forbidden": AuthenticationError,
    "invalid_request": InvalidRequestError,
    "malformed_request": InvalidRequestError,
    "unsupported_media": InvalidRequestError,
    "media_too_large": InvalidRequestError,
    "too_many_files": InvalidRequestError,
    "unknown_model": InvalidRequestError,
    "idempotency_key_reused": InvalidRequestError,
    "job_not_found": JobNotFoundError,
    "job_not_finished": JobNotFinishedError,
    "job_failed": JobFailedError,
    "job_not_cancelable": ConflictError,
    "job_not_retryable": ConflictError,
    "idempotency_key_in_progress": RetryLaterError,
    "rate_limited": RetryLaterError,
    "queue_full": RetryLaterError,
    "service_unavailable": RetryLaterError,
    "request_timeout": RetryLaterError,
}


def error_from_response(response: httpx.Response) -> APIError:
    """The typed error for an error response: by problem `code`, else by HTTP status alone."""
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        body = parsed
    code = str(body.get("code") or f"http_{response.status_code}")
    detail = str(body.get("detail") or body.get("title") or response.reason_phrase
                 or "no detail")
    retry_after = response.headers.get("Retry-After", "")
    if "retry_after_seconds" not in body and retry_after.isdigit():
        body["retry_after_seconds"] = int(retry_after)
    return _BY_CODE.get(code, APIError)(response.status_code, code, detail, body)
