"""Inference behaviours over the running stack: jobs in flight together, streamed output,
conversations and structured output."""

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from scripts.localstack import LocalStack
from scripts.sample_media import sample_jpeg
from shared.job_store import JobStore
from tests.client import result, submit, wait_terminal


def test_one_replica_runs_several_jobs_at_the_same_time(stack: LocalStack) -> None:
    photo = [("p.jpg", sample_jpeg(448, 448))]
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(
            lambda _: submit(stack, photo, max_new_tokens=300, min_new_tokens=300), range(4)))
    jobs = [wait_terminal(stack, response.json()["id"]) for response in responses]
    assert all(job["status"] == "succeeded" for job in jobs)
    started = [datetime.fromisoformat(job["times"]["inference_started_at"]) for job in jobs]
    finished = [datetime.fromisoformat(job["times"]["finished_at"]) for job in jobs]
    # Every job started inference before the first one finished: they were in flight together.
    assert max(started) < min(finished)


def test_partial_output_is_recorded_as_events_that_add_up_to_the_answer(
        stack: LocalStack, jobs: JobStore) -> None:
    job = submit(stack, [("p.jpg", sample_jpeg(448, 448))], max_new_tokens=200,
                 min_new_tokens=200).json()
    assert wait_terminal(stack, job["id"])["status"] == "succeeded"
    deltas = [json.loads(event["data"])["delta"] for event in jobs.events(job["id"])
              if event["type"] == "output"]
    assert len(deltas) >= 1
    assert "".join(deltas) == result(stack, job["id"]).json()["text"]


def test_a_job_continues_an_earlier_conversation(stack: LocalStack) -> None:
    first = wait_terminal(stack, submit(stack, [("p.jpg", sample_jpeg(448, 448))],
                                        prompt="What is this?").json()["id"])
    follow_up = submit(stack, [], prompt="And what colour is it?",
                       previous_job_id=first["id"])
    assert follow_up.status_code == 202, follow_up.text
    second = wait_terminal(stack, follow_up.json()["id"])
    assert second["status"] == "succeeded", second
    first_result, second_result = (result(stack, first["id"]).json(),
                                   result(stack, second["id"]).json())
    assert second_result["previous_job_id"] == first["id"]
    # The earlier turn (its image, question and answer) is part of the new prompt.
    assert (second_result["usage"]["prompt_tokens"]
            > first_result["usage"]["prompt_tokens"] + first_result["usage"]["completion_tokens"])


def test_only_an_existing_succeeded_job_can_be_continued(stack: LocalStack) -> None:
    missing = submit(stack, [], previous_job_id="job_nope")
    assert missing.status_code == 422
    assert "does not exist" in missing.json()["detail"]
    failed = wait_terminal(stack, submit(stack, [("b.jpg", sample_jpeg()[:500])]).json()["id"])
    refused = submit(stack, [], previous_job_id=failed["id"])
    assert refused.status_code == 422
    assert "only a succeeded job" in refused.json()["detail"]


def test_json_schema_output_reports_whether_it_parsed(stack: LocalStack) -> None:
    schema = {"type": "object", "properties": {"label": {"type": "string"}},
              "required": ["label"]}
    job = submit(stack, [("p.jpg", sample_jpeg(448, 448))], json_schema=json.dumps(schema))
    finished = wait_terminal(stack, job.json()["id"])
    body = result(stack, finished["id"]).json()
    # The CPU engine has no guided decoding and the tiny model's weights are random, so the
    # answer is not JSON; the result must say so rather than pretend.
    assert body["json_valid"] is False
    assert body["output_json"] is None


def test_an_invalid_json_schema_is_refused_at_submission(stack: LocalStack) -> None:
    response = submit(stack, [("p.jpg", sample_jpeg(64, 64))],
                      json_schema=json.dumps({"type": "no-such-type"}))
    assert response.status_code == 422
    assert "json_schema" in response.json()["detail"]
