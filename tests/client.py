"""A minimal HTTP client of the running stack for tests."""

import time
from typing import Any

import httpx

from scripts.localstack import LocalStack


def submit(stack: LocalStack, files: list[tuple[str, bytes]], prompt: str = "Describe this.",
           headers: dict[str, str] | None = None, **fields: object) -> httpx.Response:
    """POST /v1/jobs with files and form fields."""
    data = {"prompt": prompt, "max_new_tokens": "8", **{k: str(v) for k, v in fields.items()}}
    return httpx.post(f"{stack.ingest_url}/v1/jobs", data=data, timeout=30,
                      files=[("files", item) for item in files],
                      headers={**auth(stack), **(headers or {})})


def wait_terminal(stack: LocalStack, job_id: str, timeout: float = 90) -> dict[str, Any]:
    """Poll the job until it is terminal and return it."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = httpx.get(f"{stack.results_url}/v1/jobs/{job_id}", timeout=10,
                                        headers=auth(stack)).json()
        if job["terminal"]:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is still {job['status']}")
        time.sleep(0.1)


def result(stack: LocalStack, job_id: str) -> httpx.Response:
    """GET /v1/jobs/{id}/result."""
    return httpx.get(f"{stack.results_url}/v1/jobs/{job_id}/result", timeout=10,
                     headers=auth(stack))


def auth(stack: LocalStack) -> dict[str, str]:
    """The stack's API key as a request header."""
    return {"Authorization": f"Bearer {stack.api_key}"}
