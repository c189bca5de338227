"""Batches over HTTP: many jobs from one JSONL, counters, and results keyed by custom_id."""

import json
import time

import httpx

from scripts.localstack import LocalStack
from scripts.sample_media import sample_jpeg, sample_pdf
from shared.object_store import ObjectStore
from tests.client import auth


def _post_batch(stack: LocalStack, lines: list[dict[str, object]],
                files: list[tuple[str, bytes]]) -> httpx.Response:
    jsonl = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return httpx.post(f"{stack.ingest_url}/v1/batches", headers=auth(stack), timeout=60,
                      files=[("requests", ("batch.jsonl", jsonl)),
                             *[("files", item) for item in files]])


def test_a_batch_runs_every_line_and_reports_results_by_custom_id(stack: LocalStack) -> None:
    lines: list[dict[str, object]] = [
        {"custom_id": "photo-a", "prompt": "What is this?", "files": ["a.jpg"],
         "generation": {"max_new_tokens": 4}},
        {"custom_id": "photo-a-again", "prompt": "Describe it.", "files": ["a.jpg"],
         "generation": {"max_new_tokens": 4}},
        {"custom_id": "report", "prompt": "Summarise.", "files": ["r.pdf"],
         "generation": {"max_new_tokens": 4}, "media_options": {"max_tiles": 2}},
    ]
    response = _post_batch(stack, lines, [("a.jpg", sample_jpeg(300, 200)),
                                          ("r.pdf", sample_pdf(2))])
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["total"] == 3
    url = response.headers["location"]
    deadline = time.monotonic() + 120
    while (status := httpx.get(url, headers=auth(stack)).json())["finished"] < 3:
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert status["counts"] == {"succeeded": 3}
    results = httpx.get(batch["results_url"], headers=auth(stack))
    assert results.headers["content-type"].startswith("application/x-ndjson")
    rows = {row["custom_id"]: row for row in map(json.loads, results.text.splitlines())}
    assert set(rows) == {"photo-a", "photo-a-again", "report"}
    assert all(row["status"] == "succeeded" and row["result"]["text"] is not None
               for row in rows.values())
    assert rows["report"]["result"]["inputs"][0]["kind"] == "pdf"


def test_a_batch_with_a_bad_line_is_refused_whole(stack: LocalStack) -> None:
    lines: list[dict[str, object]] = [
        {"custom_id": "ok", "prompt": "Hi", "files": ["a.jpg"]},
        {"custom_id": "bad", "prompt": "Hi", "files": ["missing.jpg"]},
    ]
    response = _post_batch(stack, lines, [("a.jpg", sample_jpeg(64, 64))])
    assert response.status_code == 422
    assert response.json()["line"] == 2
    assert "missing.jpg" in response.json()["detail"]
    duplicate = _post_batch(stack, [lines[0], lines[0]], [("a.jpg", sample_jpeg(64, 64))])
    assert duplicate.status_code == 422
    assert "repeats custom_id" in duplicate.json()["detail"]


def test_another_tenants_batch_is_404(stack: LocalStack) -> None:
    response = httpx.get(f"{stack.results_url}/v1/batches/batch_nope", headers=auth(stack))
    assert response.status_code == 404
    assert response.json()["code"] == "batch_not_found"


def _media_keys(objects: ObjectStore) -> set[str]:
    return {key for key in objects.list_keys("jobs/") if "/media/" in key}


def _jobs_tagged(stack: LocalStack, tag: str) -> list[str]:
    page = httpx.get(f"{stack.results_url}/v1/jobs", headers=auth(stack),
                     params={"metadata": f"run={tag}", "limit": 200}).json()
    return [job["id"] for job in page["data"]]


def test_a_batch_whose_later_line_is_refused_creates_nothing_and_names_the_line(
        stack: LocalStack) -> None:
    tag = f"atomic-{time.monotonic_ns()}"
    lines: list[dict[str, object]] = [
        {"custom_id": "ok", "prompt": "Hi", "files": ["a.jpg"], "metadata": {"run": tag}},
        {"custom_id": "private", "prompt": "Hi", "metadata": {"run": tag},
         "inputs": [{"url": "https://10.1.2.3/photo.jpg"}]},
    ]
    response = _post_batch(stack, lines, [("a.jpg", sample_jpeg(64, 64))])
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "url_not_allowed"
    assert response.json()["line"] == 2 and response.json()["detail"].startswith("Line 2: ")
    assert _jobs_tagged(stack, tag) == []


def test_a_batch_whose_later_url_fails_to_fetch_leaves_no_job_and_no_media(
        stack: LocalStack, objects: ObjectStore) -> None:
    tag = f"atomic-fetch-{time.monotonic_ns()}"
    before = _media_keys(objects)
    lines: list[dict[str, object]] = [
        {"custom_id": "ok", "prompt": "Hi", "files": ["a.jpg"], "metadata": {"run": tag}},
        # A local server (allowed in tests) that has no such file: refused when fetched.
        {"custom_id": "gone", "prompt": "Hi", "metadata": {"run": tag},
         "inputs": [{"url": f"{stack.results_url}/no-such-file.jpg"}]},
    ]
    response = _post_batch(stack, lines, [("a.jpg", sample_jpeg(64, 64))])
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "url_fetch_failed" and response.json()["line"] == 2
    assert _jobs_tagged(stack, tag) == []
    assert _media_keys(objects) - before == set()


def test_attached_files_with_the_same_name_are_refused(stack: LocalStack) -> None:
    lines: list[dict[str, object]] = [{"custom_id": "a", "prompt": "Hi", "files": ["a.jpg"]}]
    response = _post_batch(stack, lines, [("a.jpg", sample_jpeg(64, 64)),
                                          ("a.jpg", sample_jpeg(80, 60))])
    assert response.status_code == 422
    assert "Two attached files are named 'a.jpg'" in response.json()["detail"]
