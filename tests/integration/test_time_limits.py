"""A job's own time limit, through the started services: it fails with deadline_exceeded."""

import httpx

from scripts.localstack import LocalStack
from scripts.sample_media import sample_jpeg
from tests.client import auth, submit, wait_terminal

PHOTO = [("p.jpg", sample_jpeg(200, 150))]
# Long enough that generation is still running when the limit passes.
TOKENS = 4000


def test_cancel_after_stops_a_running_job_with_deadline_exceeded(stack: LocalStack) -> None:
    response = submit(stack, PHOTO, headers={"Cancel-After": "3s"}, max_new_tokens=TOKENS,
                      min_new_tokens=TOKENS)
    assert response.status_code == 202, response.text
    job = wait_terminal(stack, response.json()["id"], timeout=90)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "deadline_exceeded" and job["error"]["retryable"]


def test_timeout_seconds_in_the_form_bounds_the_job(stack: LocalStack) -> None:
    response = submit(stack, PHOTO, timeout_seconds=3, max_new_tokens=TOKENS,
                      min_new_tokens=TOKENS)
    assert response.status_code == 202, response.text
    job = wait_terminal(stack, response.json()["id"], timeout=90)
    assert job["error"]["code"] == "deadline_exceeded", job


def test_a_bad_cancel_after_is_refused(stack: LocalStack) -> None:
    response = httpx.post(f"{stack.ingest_url}/v1/chat/jobs", timeout=30,
                          headers={**auth(stack), "Cancel-After": "tomorrow"},
                          json={"messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"
