"""How the client maps problem+json answers to typed errors."""

import httpx
import pytest

from tessera_client.errors import (
    APIError,
    AuthenticationError,
    InvalidRequestError,
    JobFailedError,
    JobNotFoundError,
    RetryLaterError,
    error_from_response,
)


def _problem(status: int, code: str, **extra: object) -> httpx.Response:
    body = {"type": f"https://tessera.dev/errors/{code}", "title": "t", "status": status,
            "code": code, "detail": f"detail of {code}", **extra}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"})


@pytest.mark.parametrize(("status", "code", "kind"), [
    (401, "unauthorized", AuthenticationError),
    (403, "forbidden", AuthenticationError),
    (415, "unsupported_media", InvalidRequestError),
    (413, "media_too_large", InvalidRequestError),
    (422, "unknown_model", InvalidRequestError),
    (404, "job_not_found", JobNotFoundError),
    (409, "job_failed", JobFailedError),
    (503, "queue_full", RetryLaterError),
    (503, "service_unavailable", RetryLaterError),
    (408, "request_timeout", RetryLaterError),
    (400, "malformed_request", InvalidRequestError),
    (418, "a_code_from_a_newer_server", APIError),
])
def test_problem_code_selects_the_error_type(status: int, code: str,
                                             kind: type[APIError]) -> None:
    error = error_from_response(_problem(status, code))
    assert type(error) is kind
    assert (error.status, error.code, error.detail) == (status, code, f"detail of {code}")


def test_failed_job_error_carries_the_jobs_own_error() -> None:
    job_error = {"code": "decode_failed", "message": "bad", "retryable": False,
                 "stage": "preprocess"}
    error = error_from_response(_problem(409, "job_failed", job_error=job_error))
    assert isinstance(error, JobFailedError) and error.job_error == job_error


def test_rate_limited_error_says_when_to_retry() -> None:
    from_body = error_from_response(_problem(429, "rate_limited", retry_after_seconds=12))
    from_header = error_from_response(httpx.Response(
        429, json={"code": "rate_limited", "detail": "slow down"}, headers={"Retry-After": "7"}))
    assert isinstance(from_body, RetryLaterError) and from_body.retry_after == 12
    assert isinstance(from_header, RetryLaterError) and from_header.retry_after == 7


def test_error_without_a_problem_body_is_named_by_its_status() -> None:
    error = error_from_response(httpx.Response(502, text="<html>Bad Gateway</html>"))
    assert type(error) is APIError
    assert (error.code, error.detail) == ("http_502", "Bad Gateway")
