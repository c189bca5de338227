"""A job travels ingest → preprocess → inference → result → webhook on real Redis, S3 and
Celery worker processes, and bad input ends as a coded error."""

import json
from pathlib import Path

import httpx

from scripts.localstack import LocalStack
from scripts.sample_media import encode_image, sample_image, sample_jpeg, sample_mp4, sample_pdf
from shared.job_store import JobStore
from shared.object_store import JobKeys, ObjectStore
from tests.client import auth, result, submit, wait_terminal
from tests.conftest import TEST_MAX_IMAGE_BYTES
from tests.webhook_receiver import WebhookReceiver


def test_image_job_answers_and_sends_one_signed_webhook(
        stack: LocalStack, webhook_receiver: WebhookReceiver) -> None:
    response = submit(stack, [("photo.jpg", sample_jpeg(1024, 768))],
                      webhook_url=webhook_receiver.url("image"), max_tiles=6)
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == job["links"]["self"]
    assert job["status"] == "queued"

    finished = wait_terminal(stack, job["id"])
    assert finished["status"] == "succeeded", finished
    body = result(stack, job["id"]).json()
    assert body["text"] == body["text"].strip() and body["usage"]["completion_tokens"] >= 1
    [summary] = body["inputs"]
    # 1024x768 (ratio 1.33) with at most 6 tiles: the closest grid ratio is 3x2 (1.5), so
    # six tiles plus a thumbnail.
    expected = {"cols": 3, "rows": 2, "thumbnail": True, "num_tiles": 7}
    assert summary["images"][0].items() >= expected.items()
    assert body["usage"]["visual_tokens"] == 7 * 256
    assert body["timings"]["total_seconds"] >= body["timings"]["inference_seconds"] > 0

    webhook_receiver.wait_for(lambda: webhook_receiver.for_job(job["id"]) != [])
    [delivery] = webhook_receiver.for_job(job["id"])
    assert delivery.payload["type"] == "job.succeeded"
    assert delivery.payload["data"]["result"]["text"] == body["text"]
    assert webhook_receiver.rejected == []


def test_video_job_samples_frames_in_time_order(stack: LocalStack) -> None:
    response = submit(stack, [("clip.mp4", sample_mp4(seconds=4, fps=10))], num_frames=8)
    job = wait_terminal(stack, response.json()["id"])
    assert job["status"] == "succeeded", job
    [summary] = result(stack, job["id"]).json()["inputs"]
    stamps = [image["timestamp_seconds"] for image in summary["images"]]
    assert stamps == sorted(stamps) and len(stamps) == 8
    assert all(image["num_tiles"] == 1 and not image["thumbnail"] for image in summary["images"])


def test_pdf_and_images_keep_their_order(stack: LocalStack) -> None:
    files = [("a.png", encode_image(sample_image(448, 448), "PNG")),
             ("doc.pdf", sample_pdf(pages=2)),
             ("b.jpg", sample_jpeg(900, 300))]
    job = wait_terminal(stack, submit(stack, files, max_tiles=4).json()["id"])
    assert job["status"] == "succeeded", job
    inputs = result(stack, job["id"]).json()["inputs"]
    assert [item["kind"] for item in inputs] == ["image", "pdf", "image"]
    assert [image["page"] for image in inputs[1]["images"]] == [1, 2]


def test_truncated_jpeg_fails_with_decode_failed_and_a_failed_webhook(
        stack: LocalStack, webhook_receiver: WebhookReceiver) -> None:
    truncated = sample_jpeg()[:2000]
    response = submit(stack, [("broken.jpg", truncated)], webhook_url=webhook_receiver.url())
    assert response.status_code == 202
    job = wait_terminal(stack, response.json()["id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "decode_failed" and job["error"]["stage"] == "preprocess"
    answer = result(stack, job["id"])
    assert answer.status_code == 409
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["job_error"]["code"] == "decode_failed"
    webhook_receiver.wait_for(lambda: webhook_receiver.for_job(job["id"]) != [])
    assert [d.payload["type"] for d in webhook_receiver.for_job(job["id"])] == ["job.failed"]


def test_webhook_is_retried_until_the_receiver_recovers(
        stack: LocalStack, webhook_receiver: WebhookReceiver, jobs: JobStore) -> None:
    webhook_receiver.fail_next("flaky", 2)
    response = submit(stack, [("p.jpg", sample_jpeg(500, 500))],
                      webhook_url=webhook_receiver.url("flaky"))
    job_id = response.json()["id"]
    webhook_receiver.wait_for(lambda: webhook_receiver.for_job(job_id) != [])
    # The worker records the delivered attempt once the receiver's answer is back.
    log_key = f"{jobs.prefix}:job:{job_id}:deliveries"
    webhook_receiver.wait_for(lambda: jobs.redis.llen(log_key) == 3, timeout=10)
    log = jobs.redis.lrange(log_key, 0, -1)
    assert [json.loads(entry)["status_code"] for entry in log] == [503, 503, 204]
    assert len(webhook_receiver.for_job(job_id)) == 1


def test_unsupported_file_is_refused_before_anything_is_stored(
        stack: LocalStack, objects: ObjectStore) -> None:
    response = submit(stack, [("notes.jpg", b"just some text pretending to be a photo")])
    assert response.status_code == 415
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "unsupported_media"


def test_oversized_image_is_refused_with_413(stack: LocalStack) -> None:
    too_big = b"\xff\xd8\xff\xe0" + bytes(TEST_MAX_IMAGE_BYTES)
    response = submit(stack, [("huge.jpg", too_big)])
    assert response.status_code == 413
    assert response.json()["code"] == "media_too_large"


def test_unknown_model_and_bad_parameters_are_422(stack: LocalStack) -> None:
    photo = [("p.jpg", sample_jpeg(64, 64))]
    assert submit(stack, photo, model="gpt-9").json()["code"] == "unknown_model"
    bad = submit(stack, photo, max_tiles=0)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
    assert "max_tiles" in bad.json()["detail"]


def test_unknown_job_is_404(stack: LocalStack) -> None:
    for path in ("", "/result", "/events"):
        response = httpx.get(f"{stack.results_url}/v1/jobs/job_doesnotexist{path}",
                             headers=auth(stack))
        assert response.status_code == 404 and response.json()["code"] == "job_not_found"


def test_one_trace_spans_ingest_both_workers_and_webhook(
        stack: LocalStack, webhook_receiver: WebhookReceiver) -> None:
    response = submit(stack, [("p.jpg", sample_jpeg(600, 400))],
                      webhook_url=webhook_receiver.url("traced"))
    job = response.json()
    assert job["trace_id"] and len(job["trace_id"]) == 32
    wait_terminal(stack, job["id"])
    webhook_receiver.wait_for(lambda: webhook_receiver.for_job(job["id"]) != [])
    traces = Path(stack.work_dir) / "traces.jsonl"

    def services_in_trace() -> set[str]:
        spans = [json.loads(line) for line in traces.read_text().splitlines()]
        return {span["resource"]["attributes"]["service.name"] for span in spans
                if span["context"]["trace_id"] == "0x" + job["trace_id"]}

    expected = {"ingest-api", "preprocess-worker", "inference-worker", "webhook-worker"}
    webhook_receiver.wait_for(lambda: expected <= services_in_trace(), timeout=20)


def test_result_object_keys_derive_from_the_job_id(
        stack: LocalStack, objects: ObjectStore) -> None:
    job = wait_terminal(stack, submit(stack, [("p.jpg", sample_jpeg(300, 300))]).json()["id"])
    keys = sorted(objects.list_keys(JobKeys(job["id"]).prefix))
    assert keys == sorted([JobKeys(job["id"]).media(0), JobKeys(job["id"]).prepared_tiles(0),
                           JobKeys(job["id"]).prepared_manifest(), JobKeys(job["id"]).result(1)])
