"""Every error a client can provoke is the documented problem+json with a stable code, even
those raised by the framework (routing, body parsing) rather than by our routes."""

import httpx
import pytest

from scripts.localstack import LocalStack
from tests.client import auth

SHA = "a" * 64


def _assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["code"] == code and body["status"] == status
    assert {"type", "title", "detail"} <= set(body)
    return body


def test_unknown_routes_and_methods_are_problems(stack: LocalStack) -> None:
    for base in (stack.ingest_url, stack.results_url):
        _assert_problem(httpx.get(f"{base}/nope", headers=auth(stack)), 404, "not_found")
    refused = httpx.delete(f"{stack.ingest_url}/v1/jobs", headers=auth(stack))
    _assert_problem(refused, 405, "method_not_allowed")
    assert refused.headers["allow"] == "POST"


def test_malformed_bodies_are_problems(stack: LocalStack) -> None:
    json_headers = {**auth(stack), "Content-Type": "application/json"}
    bad_json = httpx.post(f"{stack.ingest_url}/v1/chat/jobs", content=b'{"messages": [',
                          headers=json_headers)
    _assert_problem(bad_json, 400, "malformed_request")
    bad_multipart = httpx.post(
        f"{stack.ingest_url}/v1/jobs", content=b"garbage",
        headers={**auth(stack), "Content-Type": "multipart/form-data; boundary=xx"})
    body = _assert_problem(bad_multipart, 400, "malformed_request")
    assert "multipart" in str(body["detail"])
    huge_field = httpx.post(f"{stack.ingest_url}/v1/jobs", headers=auth(stack),
                            files=[("files", ("a.jpg", b"x"))],
                            data={"prompt": "x" * (2 * 1024 * 1024)})
    assert huge_field.headers["content-type"] == "application/problem+json"
    assert huge_field.status_code in (400, 413, 422)


@pytest.mark.parametrize("cursor", ["nan", "+nan", "1_0", "inf", "-1", "1e3", "abc"])
def test_a_cursor_that_no_page_handed_out_is_422(stack: LocalStack, cursor: str) -> None:
    response = httpx.get(f"{stack.results_url}/v1/jobs", headers=auth(stack),
                         params={"cursor": cursor})
    _assert_problem(response, 422, "invalid_request")


@pytest.mark.parametrize("content_type", ["video/mp4\r\nX-Injected: 1", "vid€o/mp4",
                                          "not a mime type"])
def test_an_upload_content_type_that_is_no_mime_type_is_422(stack: LocalStack,
                                                             content_type: str) -> None:
    response = httpx.post(f"{stack.ingest_url}/v1/uploads", headers=auth(stack),
                          json={"filename": "a.mp4", "size_bytes": 20 * 2**20, "sha256": SHA,
                                "parts": 2, "content_type": content_type})
    _assert_problem(response, 422, "invalid_request")
