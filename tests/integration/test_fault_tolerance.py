"""A killed inference pool process does not lose, duplicate or wedge a job."""

import os
import signal
import time

from scripts.localstack import LocalStack
from scripts.sample_media import sample_jpeg
from shared.job_store import JobStore
from shared.object_store import JobKeys, ObjectStore
from tests.client import submit, wait_terminal
from tests.webhook_receiver import WebhookReceiver

# Enough forced tokens that generation runs for seconds on the tiny model: time to kill it.
SLOW_TOKENS = 300


def test_sigkilled_inference_process_job_still_completes_exactly_once(
        stack: LocalStack, jobs: JobStore, objects: ObjectStore,
        webhook_receiver: WebhookReceiver) -> None:
    response = submit(stack, [("p.jpg", sample_jpeg(448, 448))],
                      webhook_url=webhook_receiver.url("fault"),
                      max_new_tokens=SLOW_TOKENS, min_new_tokens=SLOW_TOKENS)
    job_id = response.json()["id"]

    deadline = time.monotonic() + 60
    while (record := jobs.get(job_id)).status != "inferring":
        assert time.monotonic() < deadline, f"job never started inference: {record.status}"
        time.sleep(0.05)
    assert record.worker is not None
    pool_pid = int(record.worker.rsplit("/", 1)[1])
    time.sleep(0.5)  # inside generate, holding the unacknowledged task
    os.kill(pool_pid, signal.SIGKILL)

    job = wait_terminal(stack, job_id, timeout=120)
    assert job["status"] == "succeeded", job
    assert job["attempts"]["inference"] == 2
    # The run that was killed never wrote a result; the second one wrote its own.
    assert list(objects.list_keys(JobKeys(job_id).prefix + "result")) == [JobKeys(job_id).result(2)]
    webhook_receiver.wait_for(lambda: webhook_receiver.for_job(job_id) != [])
    time.sleep(2)  # a duplicate would arrive within this window
    assert [d.payload["type"] for d in webhook_receiver.for_job(job_id)] == ["job.succeeded"]
    terminal_events = [event for event in jobs.events(job_id) if '"succeeded"' in event["data"]]
    assert len(terminal_events) == 1
