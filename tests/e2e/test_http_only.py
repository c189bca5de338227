"""The started services, over HTTP only: what a client sees."""

import json

import httpx

from scripts.localstack import LocalStack
from scripts.sample_media import sample_jpeg
from tests.client import result, submit


def test_client_follows_a_job_by_its_event_stream_to_the_result(stack: LocalStack) -> None:
    job = submit(stack, [("photo.jpg", sample_jpeg(800, 600))]).json()
    statuses = []
    with httpx.stream("GET", job["links"]["events"], timeout=60) as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        for line in events.iter_lines():
            if line.startswith("data: "):
                statuses.append(json.loads(line.removeprefix("data: "))["status"])
    assert statuses == ["queued", "preprocessing", "inferring", "succeeded"]
    answer = result(stack, job["id"])
    assert answer.status_code == 200 and answer.json()["job_id"] == job["id"]


def test_event_stream_resumes_after_last_event_id(stack: LocalStack) -> None:
    job = submit(stack, [("photo.jpg", sample_jpeg(300, 200))]).json()
    with httpx.stream("GET", job["links"]["events"], timeout=60) as events:
        ids = [line.removeprefix("id: ") for line in events.iter_lines()
               if line.startswith("id: ")]
    resumed = httpx.get(job["links"]["events"], headers={"Last-Event-ID": ids[1]}, timeout=60)
    assert [line.removeprefix("id: ") for line in resumed.text.splitlines()
            if line.startswith("id: ")] == ids[2:]


def test_result_is_202_with_the_job_while_it_runs(stack: LocalStack) -> None:
    job = submit(stack, [("p.jpg", sample_jpeg(448, 448))], max_new_tokens=400,
                 min_new_tokens=400).json()
    early = result(stack, job["id"])
    assert early.status_code == 202
    assert early.json()["id"] == job["id"] and early.headers["retry-after"] == "1"


def test_openapi_documents_the_job_endpoints(stack: LocalStack) -> None:
    ingest = httpx.get(f"{stack.ingest_url}/openapi.json").json()
    results = httpx.get(f"{stack.results_url}/openapi.json").json()
    assert "/v1/jobs" in ingest["paths"]
    assert {"/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result",
            "/v1/jobs/{job_id}/events"} <= set(results["paths"])
