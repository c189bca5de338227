"""The Python client and the `tessera` command against the started services, over HTTP only."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.localstack import LocalStack
from scripts.sample_media import sample_jpeg
from tessera_client import (
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    JobNotFoundError,
    ServerEvent,
    Tessera,
)

TESSERA = Path(sys.executable).parent / "tessera"


@pytest.fixture
def client(stack: LocalStack) -> Tessera:
    """A client of the stack with its API key."""
    return Tessera(stack.ingest_url, stack.results_url, stack.api_key)


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A small JPEG on disk."""
    path = tmp_path / "photo.jpg"
    path.write_bytes(sample_jpeg(640, 480))
    return path


def _cli(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed `tessera` command, configured by environment variables."""
    env = {**os.environ, "TESSERA_API_URL": stack.ingest_url,
           "TESSERA_RESULTS_URL": stack.results_url, "TESSERA_API_KEY": stack.api_key}
    return subprocess.run([str(TESSERA), *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_client_submits_follows_the_stream_and_reads_the_result(client: Tessera,
                                                               photo: Path) -> None:
    uploaded: list[tuple[int, int]] = []
    events: list[ServerEvent] = []
    job = client.submit([photo], "What is in this picture?", max_new_tokens=24,
                        min_new_tokens=24, on_progress=lambda *sent: uploaded.append(sent))
    finished = client.wait(job.id, timeout=90, on_event=events.append)
    result = client.result(job.id)
    statuses = [event.json()["status"] for event in events if event.event == "status"]
    streamed = "".join(event.json()["delta"] for event in events if event.event == "output")
    assert statuses == ["queued", "preprocessing", "inferring", "succeeded"]
    assert finished.status == "succeeded" and finished.trace_id == job.trace_id
    assert result.job_id == job.id and streamed == result.text
    assert uploaded[-1][0] == uploaded[-1][1] > photo.stat().st_size


def test_client_raises_typed_errors_with_the_problem_code(stack: LocalStack, client: Tessera,
                                                         tmp_path: Path) -> None:
    with pytest.raises(JobNotFoundError) as missing:
        client.get("job_does_not_exist")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    with pytest.raises(InvalidRequestError) as unsupported:
        client.submit([text_file], "Describe this.")
    with (Tessera(stack.ingest_url, stack.results_url, "tsk_wrong") as stranger,
          pytest.raises(AuthenticationError) as refused):
        stranger.get("job_does_not_exist")
    assert (missing.value.status, missing.value.code) == (404, "job_not_found")
    assert (unsupported.value.status, unsupported.value.code) == (415, "unsupported_media")
    assert (refused.value.status, refused.value.code) == (401, "unauthorized")


def test_cli_submit_waits_then_status_and_result_show_the_job(stack: LocalStack,
                                                              photo: Path) -> None:
    submitted = _cli(stack, "submit", str(photo), "What is in this picture?", "--wait",
                     "--max-new-tokens", "8", "--json")
    assert submitted.returncode == 0, submitted.stderr
    answer = json.loads(submitted.stdout)
    status = _cli(stack, "status", answer["job_id"], "--json")
    result = _cli(stack, "result", answer["job_id"])
    assert json.loads(status.stdout)["status"] == "succeeded"
    assert json.loads(status.stdout)["trace_id"]
    assert result.returncode == 0 and result.stdout == answer["text"] + "\n"


def test_cli_submit_without_wait_prints_the_job_id(stack: LocalStack, photo: Path) -> None:
    submitted = _cli(stack, "submit", str(photo), "Describe this.", "-o", "max_new_tokens=4")
    job_id = submitted.stdout.strip()
    waited = _cli(stack, "result", job_id, "--wait", "--json")
    assert submitted.returncode == 0 and job_id.startswith("job_")
    assert waited.returncode == 0 and json.loads(waited.stdout)["job_id"] == job_id


def test_cli_reports_the_problem_code_and_fails(stack: LocalStack) -> None:
    missing = _cli(stack, "status", "job_does_not_exist")
    assert missing.returncode == 1
    assert "job_not_found" in missing.stderr and missing.stdout == ""


def test_cli_batch_writes_one_result_line_per_custom_id(stack: LocalStack, photo: Path,
                                                        tmp_path: Path) -> None:
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "photo.jpg").write_bytes(photo.read_bytes())
    lines = [
        {"custom_id": "a", "files": ["photo.jpg"], "prompt": "Describe this.",
         "generation": {"max_new_tokens": 4}},
        {"custom_id": "b", "files": ["pages/photo.jpg"], "prompt": "What colour?",
         "generation": {"max_new_tokens": 4}},
    ]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines))
    run = _cli(stack, "batch", str(batch), "--json")
    records = {record["custom_id"]: record for record in map(
        json.loads, (tmp_path / "batch.results.jsonl").read_text().splitlines())}
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["finished"] == 2
    assert {records["a"]["status"], records["b"]["status"]} == {"succeeded"}
    assert records["a"]["result"]["job_id"] == records["a"]["job_id"]


def test_client_cancels_a_running_job_and_lists_it(client: Tessera, photo: Path) -> None:
    job = client.submit([photo], "Describe this.", max_new_tokens=2000, min_new_tokens=2000)
    canceled = client.cancel(job.id)
    finished = client.wait(job.id, timeout=60)
    page = client.list_jobs(status="canceled", limit=50)
    assert canceled.status in {"canceling", "canceled"} and finished.status == "canceled"
    assert job.id in {listed.id for listed in page.data}
    with pytest.raises(ConflictError) as again:
        client.cancel(job.id)
    assert again.value.code == "job_not_cancelable"
