"""The error model: every code has an HTTP status and a message; problems render the same way."""

import json

from shared.errors import ERRORS, ErrorCode, TesseraError
from shared.http_api import problem


def test_every_error_code_has_an_http_mapping() -> None:
    assert set(ERRORS) == set(ErrorCode)
    assert all(100 <= info.http_status < 600 and info.message for info in ERRORS.values())


def test_error_keeps_code_message_and_status() -> None:
    error = TesseraError(ErrorCode.media_too_large, "too big", limit_bytes=5)
    assert (error.code, error.message, error.http_status) == ("media_too_large", "too big", 413)
    assert error.details == {"limit_bytes": 5}


def test_error_without_message_uses_the_table_default() -> None:
    assert TesseraError(ErrorCode.unsupported_media).message == \
        ERRORS[ErrorCode.unsupported_media].message


def test_problem_body_is_rfc9457_with_stable_code() -> None:
    response = problem(TesseraError(ErrorCode.unknown_model, "no such model", model="x"))
    body = json.loads(bytes(response.body))
    assert response.status_code == 422
    assert response.media_type == "application/problem+json"
    assert body == {"type": "https://tessera.dev/errors/unknown_model",
                    "title": ERRORS[ErrorCode.unknown_model].message, "status": 422,
                    "code": "unknown_model", "detail": "no such model", "model": "x"}
