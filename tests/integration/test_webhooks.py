"""Webhooks end to end: filtered events in sequence order, retries that deliver each event once,
410, Retry-After, redirects, the delivery log with redelivery, secret rotation within a tenant,
events queued from outside the workers, and attempts that fail before sending."""

import dataclasses
import io
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from scripts.localstack import LocalStack
from scripts.sample_media import sample_jpeg
from services.webhook_worker.config import WebhookSettings
from services.webhook_worker.delivery import WebhookSender
from shared.auth import ApiKeyStore, Scope
from shared.celery_factory import create_celery_app
from shared.job_store import JobStore, utcnow
from shared.object_store import ObjectStore
from shared.schemas import JobStatus
from shared.settings import BaseServiceSettings, WebhookSigningSettings
from shared.webhook_events import (
    CLAIM_SECONDS,
    AttemptInFlight,
    DeliveryLedger,
    WebhookDelivery,
    WebhookOutbox,
    queue_event,
)
from tests.client import auth, wait_terminal
from tests.factories import job_record
from tests.webhook_receiver import WebhookReceiver

PHOTO = [("p.jpg", sample_jpeg(320, 240))]
DEPLOYMENT_SECRET = WebhookSigningSettings().WEBHOOK_SECRET.get_secret_value()


@dataclass(frozen=True)
class Request:
    """One request as it reached the receiver, verified or not."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class ScriptedReceiver(WebhookReceiver):
    """A receiver that answers planned statuses per path first and keeps every raw request."""

    def __init__(self, secret: str) -> None:
        self.planned: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.requests: list[Request] = []
        super().__init__(secret)

    def plan(self, path: str, *responses: tuple[int, dict[str, str]]) -> None:
        """Answer the next requests on path with these statuses and headers, in order."""
        with self.lock:
            self.planned[path] = list(responses)

    def on(self, path: str) -> list[Request]:
        """Raw requests received on path."""
        with self.lock:
            return [request for request in self.requests if request.path == path]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver, verifying = self, super()._handler()

        class Handler(verifying):  # type: ignore[valid-type,misc]
            def do_POST(self) -> None:
                body = self.rfile.read(  # type: ignore[has-type]
                    int(self.headers["content-length"]))
                path = self.path.strip("/")
                with receiver.lock:
                    receiver.requests.append(
                        Request(path, dict(self.headers.items()), body, time.monotonic()))
                    planned = receiver.planned.get(path, [])
                    status, headers = planned.pop(0) if planned else (0, {})
                if not status:
                    # The verifying handler reads the body again.
                    self.rfile = io.BytesIO(body)
                    super().do_POST()
                    return
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()

        return Handler


@pytest.fixture(scope="module")
def receiver() -> Iterator[ScriptedReceiver]:
    """A scripted receiver verifying with the deployment's secret."""
    scripted = ScriptedReceiver(DEPLOYMENT_SECRET)
    with scripted:
        yield scripted


def _tenant_stack(stack: LocalStack, jobs: JobStore, tenant: str,
                  scopes: tuple[Scope, ...] = (Scope.submit, Scope.read)) -> LocalStack:
    """The stack as seen through a new API key of its own tenant (isolated from other tests)."""
    token, _ = ApiKeyStore(jobs.redis, jobs.prefix).create(
        tenant_id=tenant, scopes=list(scopes), name="webhook tests")
    return dataclasses.replace(stack, api_key=token)


def _key_id(stack: LocalStack) -> str:
    """The id of the stack's API key (tokens are `tsk_<id>_<secret>`)."""
    return stack.api_key.removeprefix("tsk_").split("_", 1)[0]


@pytest.fixture(scope="module")
def tenant(stack: LocalStack, jobs: JobStore) -> LocalStack:
    """The stack with an API key of a tenant of these tests."""
    return _tenant_stack(stack, jobs, f"webhooks-{uuid.uuid4().hex[:6]}")


def _submit(stack: LocalStack, url: str, events: list[str]) -> str:
    """Submit a small job with a webhook and an event filter; its id."""
    response = httpx.post(f"{stack.ingest_url}/v1/jobs", headers=auth(stack), timeout=30,
                          files=[("files", item) for item in PHOTO],
                          data={"prompt": "Describe this.", "max_new_tokens": "8",
                                "webhook_url": url, "webhook_events": events})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def _deliveries(stack: LocalStack, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{stack.results_url}/v1/jobs/{job_id}/deliveries", headers=auth(stack))
    assert response.status_code == 200, response.text
    log: dict[str, Any] = response.json()
    return log


def _terminal_delivered(receiver: WebhookReceiver, job_id: str) -> bool:
    return any(d.payload["type"] == "job.succeeded" for d in receiver.for_job(job_id))


def test_filtered_events_arrive_with_increasing_sequence_and_the_outcome_last(
        tenant: LocalStack, receiver: ScriptedReceiver) -> None:
    everything = _submit(tenant, receiver.url("all"), ["started", "progress", "output"])
    output_only = _submit(tenant, receiver.url("output"), ["output"])
    for job_id in (everything, output_only):
        receiver.wait_for(partial(_terminal_delivered, receiver, job_id))
    text = httpx.get(f"{tenant.results_url}/v1/jobs/{everything}/result",
                     headers=auth(tenant)).json()["text"]
    # The terminal event is queued after the others, but retries and two worker processes may
    # deliver out of order: receivers order by sequence.
    payloads = sorted((d.payload for d in receiver.for_job(everything)),
                      key=lambda payload: payload["sequence"])
    types = [payload["type"] for payload in payloads]
    assert types[0] == "job.started" and types[-1] == "job.succeeded"
    assert {"job.progress", "job.output"} <= set(types)
    assert len({payload["sequence"] for payload in payloads}) == len(payloads)
    assert "".join(p["data"]["delta"] for p in payloads if p["type"] == "job.output") == text
    assert {d.payload["type"] for d in receiver.for_job(output_only)} <= {"job.output",
                                                                          "job.succeeded"}
    assert receiver.rejected == []


def test_receiver_that_fails_then_recovers_gets_every_event_exactly_once(
        tenant: LocalStack, receiver: ScriptedReceiver) -> None:
    receiver.fail_next("flaky-events", 3)
    job_id = _submit(tenant, receiver.url("flaky-events"), ["started", "progress"])
    receiver.wait_for(lambda: _terminal_delivered(receiver, job_id))
    receiver.wait_for(lambda: all(e["delivered"] for e in _deliveries(tenant, job_id)["events"]))
    log = _deliveries(tenant, job_id)
    ids = [delivery.message_id for delivery in receiver.for_job(job_id)]
    assert sorted(ids) == sorted(event["id"] for event in log["events"])
    assert [a["status_code"] for a in log["attempts"]].count(503) == 3


def test_410_disables_the_url_until_a_new_job_names_it(
        tenant: LocalStack, receiver: ScriptedReceiver) -> None:
    receiver.plan("gone", *[(410, {})] * 20)
    job_id = _submit(tenant, receiver.url("gone"), ["started", "progress", "output"])
    wait_terminal(tenant, job_id)

    def settled() -> bool:
        attempts = _deliveries(tenant, job_id)["attempts"]
        return any(a["event_type"] == "job.succeeded" for a in attempts)

    receiver.wait_for(settled)
    attempts = _deliveries(tenant, job_id)["attempts"]
    assert attempts[0]["status_code"] == 410 and attempts[0]["outcome"] == "disabled"
    assert {a["outcome"] for a in attempts} <= {"disabled", "skipped"}
    assert next(a for a in attempts if a["event_type"] == "job.succeeded")["outcome"] == "skipped"
    assert receiver.for_job(job_id) == []

    receiver.plan("gone")  # the receiver is back
    again = _submit(tenant, receiver.url("gone"), [])
    receiver.wait_for(lambda: _terminal_delivered(receiver, again))


def test_429_retry_after_is_honoured(tenant: LocalStack, receiver: ScriptedReceiver) -> None:
    receiver.plan("busy", (429, {"Retry-After": "2"}))
    job_id = _submit(tenant, receiver.url("busy"), [])
    receiver.wait_for(lambda: _terminal_delivered(receiver, job_id))
    first, second = receiver.on("busy")[:2]
    # The test stack caps backoff at 1 s, so only Retry-After explains the wait.
    assert second.at - first.at >= 1.9
    assert _deliveries(tenant, job_id)["attempts"][0]["retry_after_seconds"] == 2


def test_redirect_is_recorded_not_followed_and_retried(
        tenant: LocalStack, receiver: ScriptedReceiver) -> None:
    elsewhere = receiver.url("elsewhere")
    receiver.plan("moved", (302, {"Location": elsewhere}))
    job_id = _submit(tenant, receiver.url("moved"), [])
    receiver.wait_for(lambda: _terminal_delivered(receiver, job_id))
    first, second = _deliveries(tenant, job_id)["attempts"]
    assert first["status_code"] == 302 and first["outcome"] == "retrying"
    assert first["error"] == f"redirect not followed to {elsewhere}"
    assert second["outcome"] == "delivered"
    assert receiver.on("elsewhere") == []


def test_delivery_log_and_redeliver_send_an_event_again(
        stack: LocalStack, tenant: LocalStack, receiver: ScriptedReceiver) -> None:
    job_id = _submit(tenant, receiver.url("again"), [])
    receiver.wait_for(lambda: _terminal_delivered(receiver, job_id))
    [event] = _deliveries(tenant, job_id)["events"]
    assert event["type"] == "job.succeeded" and event["delivered"]
    [attempt] = _deliveries(tenant, job_id)["attempts"]
    assert attempt["status_code"] == 204 and attempt["latency_ms"] > 0 and attempt["at"]

    base = f"{tenant.results_url}/v1/jobs/{job_id}/deliveries"
    response = httpx.post(f"{base}/{event['id']}/redeliver", headers=auth(tenant))
    assert response.status_code == 202
    receiver.wait_for(lambda: len(receiver.for_job(job_id)) == 2)
    assert {d.message_id for d in receiver.for_job(job_id)} == {event["id"]}
    assert httpx.post(f"{base}/evt_nope/redeliver", headers=auth(tenant)).status_code == 404
    # Another tenant's key sees no such job.
    assert httpx.get(base, headers=auth(stack)).status_code == 404


def test_rotation_signs_with_old_and_new_secret_during_the_overlap(
        stack: LocalStack, jobs: JobStore, receiver: ScriptedReceiver) -> None:
    rotating = _tenant_stack(stack, jobs, f"rotation-{uuid.uuid4().hex[:6]}")
    secret_url = f"{rotating.results_url}/v1/webhook-secret"
    assert httpx.get(secret_url, headers=auth(rotating)).json()["source"] == "deployment"
    rotated = httpx.post(f"{secret_url}/rotate", json={"overlap_seconds": 600},
                         headers=auth(rotating)).json()
    new_secret = rotated["secret"]
    assert new_secret.startswith("whsec_") and rotated["previous_expires_at"]
    info = httpx.get(secret_url, headers=auth(rotating)).json()
    assert info["source"] == "key" and "secret" not in info
    assert httpx.post(f"{secret_url}/rotate", params={"key_id": "someone-else"}, json={},
                      headers=auth(rotating)).status_code == 403

    job_id = _submit(rotating, receiver.url("rotated"), [])
    receiver.wait_for(lambda: _terminal_delivered(receiver, job_id))
    [request] = receiver.on("rotated")
    assert len(request.headers["webhook-signature"].split()) == 2
    for secret in (new_secret, DEPLOYMENT_SECRET):
        Webhook(secret).verify(request.body, request.headers)



def test_admin_key_manages_secrets_of_its_own_tenant_only(
        stack: LocalStack, jobs: JobStore) -> None:
    tenant, other = f"admin-{uuid.uuid4().hex[:6]}", f"victim-{uuid.uuid4().hex[:6]}"
    admin = _tenant_stack(stack, jobs, tenant, (Scope.admin,))
    colleague, victim = _tenant_stack(stack, jobs, tenant), _tenant_stack(stack, jobs, other)
    secret_url = f"{admin.results_url}/v1/webhook-secret"

    for key_id in (_key_id(victim), "no-such-key"):
        response = httpx.post(f"{secret_url}/rotate", params={"key_id": key_id}, json={},
                              headers=auth(admin))
        assert response.status_code == 403, response.text
        assert httpx.get(secret_url, params={"key_id": key_id},
                         headers=auth(admin)).status_code == 403
    assert httpx.get(secret_url, headers=auth(victim)).json()["source"] == "deployment"

    rotated = httpx.post(f"{secret_url}/rotate", params={"key_id": _key_id(colleague)}, json={},
                         headers=auth(admin))
    assert rotated.status_code == 200, rotated.text
    assert httpx.get(secret_url, headers=auth(colleague)).json()["source"] == "key"


def test_event_queued_outside_the_workers_is_delivered(
        stack: LocalStack, settings: BaseServiceSettings, jobs: JobStore,
        receiver: ScriptedReceiver) -> None:
    record = job_record(status=JobStatus.canceled, webhook_url=receiver.url("queued"))
    jobs.create(record)
    queue_event(create_celery_app("test-producer", settings), jobs.redis, jobs.prefix, record,
                "job.canceled", {})
    receiver.wait_for(lambda: bool(receiver.for_job(record.id)))
    [delivery] = receiver.for_job(record.id)
    assert delivery.payload["type"] == "job.canceled"


def test_attempt_that_fails_before_sending_is_logged_and_retried(
        settings: BaseServiceSettings, objects: ObjectStore) -> None:
    # A prefix of its own: the stack's webhook worker must not take the scheduled retry.
    prefix = f"{settings.KEY_PREFIX}-sender"
    jobs = JobStore.from_url(settings.REDIS_URL, prefix)
    record = job_record(status=JobStatus.succeeded, webhook_url="https://hooks.example/x",
                        result_key="nowhere/result.json")
    jobs.create(record)
    outbox = WebhookOutbox(jobs.redis, prefix)
    event = outbox.create(record, "job.succeeded")
    assert event is not None
    sender = WebhookSender(settings=WebhookSettings(**{**settings.model_dump(),
                                                       "KEY_PREFIX": prefix}),
                           jobs=jobs, objects=objects, http=httpx.Client())

    # The result is missing from S3, so building the payload raises.
    attempt = sender.send(WebhookDelivery(job_id=record.id, event_id=event.id))

    assert attempt is not None and attempt.outcome == "retrying"
    assert attempt.status_code is None and attempt.error and "KeyError" in attempt.error
    assert DeliveryLedger(jobs.redis, prefix).attempts(record.id) == [attempt]
    [retry] = outbox.take_due(time.time() + 24 * 3600)
    assert (retry.event_id, retry.attempt) == (event.id, 1)
    # The attempt settled its in-flight lease: nothing is sent again as interrupted, and the
    # retry may start.
    ledger = DeliveryLedger(jobs.redis, prefix)
    assert ledger.take_interrupted(time.time() + 3600) == []
    assert ledger.begin(AttemptInFlight(delivery=retry, event_type=event.type, number=2,
                                        started_at=utcnow()), 1) == "started"


def test_attempt_cut_off_by_a_dead_worker_is_sent_again_promptly_with_the_same_id(
        settings: BaseServiceSettings, objects: ObjectStore) -> None:
    prefix = f"{settings.KEY_PREFIX}-crash"
    jobs = JobStore.from_url(settings.REDIS_URL, prefix)
    with WebhookReceiver(DEPLOYMENT_SECRET) as hooks:
        record = job_record(status=JobStatus.canceled, webhook_url=hooks.url("crash"))
        jobs.create(record)
        outbox = WebhookOutbox(jobs.redis, prefix)
        event = outbox.create(record, "job.canceled")
        assert event is not None
        sender = WebhookSender(settings=WebhookSettings(**{**settings.model_dump(),
                                                           "KEY_PREFIX": prefix}),
                               jobs=jobs, objects=objects, http=httpx.Client())
        first = WebhookDelivery(job_id=record.id, event_id=event.id)

        # A worker starts the attempt and its POST reaches the receiver; then the worker dies
        # before recording the outcome (the task's message is redelivered much later).
        dying = WebhookSender(settings=sender.settings, jobs=jobs, objects=objects,
                              http=httpx.Client())
        dying.ledger.record = lambda *_, **__: None  # type: ignore[method-assign]
        dying.send(first)
        assert len(hooks.for_job(record.id)) == 1

        # Once its lease ends, housekeeping sends it again at once, announced in the log.
        assert sender.ledger.take_interrupted(time.time()) == []
        [lost] = sender.ledger.take_interrupted(time.time() + sender.lease_seconds + 1)
        sender.resend_interrupted(lost)
        [resend] = outbox.take_due(time.time())
        attempt = sender.send(resend)
        assert attempt is not None and attempt.outcome == "delivered"
        # The redelivered message of the cut-off attempt is not sent a third time.
        assert sender.send(first) is None
        ids = [delivery.message_id for delivery in hooks.for_job(record.id)]
        assert ids == [event.id, event.id]
        outcomes = [(a.number, a.outcome) for a in sender.ledger.attempts(record.id)]
        assert outcomes == [(1, "interrupted"), (1, "delivered")]


def test_a_due_delivery_is_taken_by_one_poller_and_comes_back_unless_settled(
        settings: BaseServiceSettings) -> None:
    outbox = WebhookOutbox(JobStore.from_url(settings.REDIS_URL, settings.KEY_PREFIX).redis,
                           f"{settings.KEY_PREFIX}-outbox-{uuid.uuid4().hex[:6]}")
    delivery = WebhookDelivery(job_id="job_x", event_id="evt_job_x_succeeded")
    outbox.schedule(delivery, time.time())
    [taken] = outbox.take_due(time.time())
    assert outbox.take_due(time.time()) == []
    # The poller died before queuing it: it falls due again.
    assert outbox.take_due(time.time() + CLAIM_SECONDS + 1) == [taken]
    outbox.settle(taken)
    assert outbox.take_due(time.time() + 2 * CLAIM_SECONDS + 1) == []
