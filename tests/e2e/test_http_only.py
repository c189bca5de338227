"""The started services, over HTTP only: what a client sees."""

import json

import httpx

from scripts.localstack import LocalStack
from scripts.sample_media import sample_jpeg
from tests.client import auth, result, submit


def _events(stack: LocalStack, url: str,
            **headers: str) -> list[tuple[str, str, dict[str, str]]]:
    """(id, event type, data) of every server-sent event until the stream closes."""
    events: list[tuple[str, str, dict[str, str]]] = []
    current: dict[str, str] = {}
    with httpx.stream("GET", url, timeout=60, headers={**auth(stack), **headers}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if "data" in current:
                    events.append((current["id"], current["event"], json.loads(current["data"])))
                current = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                current[field] = value
    return events


def test_client_follows_a_job_by_its_event_stream_to_the_result(stack: LocalStack) -> None:
    job = submit(stack, [("photo.jpg", sample_jpeg(800, 600))], max_new_tokens=64,
                 min_new_tokens=64).json()
    events = _events(stack, job["links"]["events"])
    statuses = [data["status"] for _, kind, data in events if kind == "status"]
    assert statuses == ["queued", "preprocessing", "inferring", "succeeded"]
    streamed = "".join(data["delta"] for _, kind, data in events if kind == "output")
    answer = result(stack, job["id"])
    assert answer.status_code == 200 and answer.json()["job_id"] == job["id"]
    assert streamed == answer.json()["text"]


def test_event_stream_resumes_after_last_event_id(stack: LocalStack) -> None:
    job = submit(stack, [("photo.jpg", sample_jpeg(300, 200))]).json()
    ids = [event_id for event_id, _, _ in _events(stack, job["links"]["events"])]
    resumed = _events(stack, job["links"]["events"], **{"Last-Event-ID": ids[1]})
    assert [event_id for event_id, _, _ in resumed] == ids[2:]


def test_result_is_202_with_the_job_while_it_runs(stack: LocalStack) -> None:
    job = submit(stack, [("p.jpg", sample_jpeg(448, 448))], max_new_tokens=400,
                 min_new_tokens=400).json()
    early = result(stack, job["id"])
    assert early.status_code == 202
    assert early.json()["id"] == job["id"] and early.headers["retry-after"] == "1"


def test_openapi_documents_the_job_endpoints(stack: LocalStack) -> None:
    ingest = httpx.get(f"{stack.ingest_url}/openapi.json").json()
    results = httpx.get(f"{stack.results_url}/openapi.json").json()
    assert {"/v1/jobs", "/v1/chat/jobs", "/v1/batches", "/v1/uploads",
            "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/retry"} <= set(ingest["paths"])
    assert "job-event" in ingest["webhooks"]
    assert "WebhookPayload" in ingest["components"]["schemas"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result",
            "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/deliveries",
            "/v1/batches/{batch_id}", "/v1/batches/{batch_id}/results"} <= set(results["paths"])
    for document in (ingest, results):
        for operations in document["paths"].values():
            for operation in operations.values():
                assert "application/problem+json" in operation["responses"]["default"]["content"]
