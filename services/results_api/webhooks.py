"""HTTP routes for webhooks: a job's delivery log and redelivery, and the caller's signing
secret (rotation with an overlap, metadata)."""

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from shared.auth import ApiKeyStore, Scope
from shared.errors import ErrorCode, TesseraError
from shared.http_api import JobDep, JobStoreDep, OwnJobDep, SubmitterDep
from shared.webhook_events import (
    DeliveryAttempt,
    DeliveryLedger,
    WebhookDelivery,
    WebhookEvent,
    WebhookOutbox,
)
from shared.webhook_secrets import RotatedSecret, WebhookSecretInfo, WebhookSecretStore

router = APIRouter(prefix="/v1", tags=["webhooks"])

MAX_OVERLAP_SECONDS = 7 * 24 * 3600


class WebhookEventPublic(WebhookEvent):
    """A job's webhook event and whether its receiver acknowledged it."""

    delivered: bool


class DeliveryLogPublic(BaseModel):
    """A job's webhook events and every attempt to deliver them, oldest first."""

    job_id: str
    webhook_url: str | None
    events: list[WebhookEventPublic]
    attempts: list[DeliveryAttempt]


class RedeliveryPublic(BaseModel):
    """A redelivery that was queued."""

    job_id: str
    event_id: str


class SecretRotation(BaseModel):
    """How long the replaced secret keeps signing next to the new one."""

    model_config = ConfigDict(extra="forbid")

    overlap_seconds: int = Field(default=24 * 3600, ge=0, le=MAX_OVERLAP_SECONDS)


def get_outbox(jobs: JobStoreDep) -> WebhookOutbox:
    """Webhook events and the delivery schedule, on the API's Redis connection."""
    return WebhookOutbox(jobs.redis, jobs.prefix)


def get_ledger(jobs: JobStoreDep) -> DeliveryLedger:
    """The delivery ledger and log, on the API's Redis connection."""
    return DeliveryLedger(jobs.redis, jobs.prefix)


def get_secrets(jobs: JobStoreDep) -> WebhookSecretStore:
    """Signing secrets per API key, on the API's Redis connection."""
    return WebhookSecretStore(jobs.redis, jobs.prefix)


def get_api_keys(jobs: JobStoreDep) -> ApiKeyStore:
    """API keys, on the API's Redis connection."""
    return ApiKeyStore(jobs.redis, jobs.prefix)


def secret_owner(principal: SubmitterDep,
                 keys: Annotated[ApiKeyStore, Depends(get_api_keys)],
                 key_id: Annotated[str | None, Query(
                     description="Another API key's id of your tenant (admin keys only)")] = None,
                 ) -> str:
    """The key whose secret is managed: the caller's own, or for an admin any key of its
    tenant."""
    if key_id is None or key_id == principal.key_id:
        return principal.key_id
    if Scope.admin not in principal.scopes:
        raise TesseraError(ErrorCode.forbidden, "Only admin keys manage other keys' secrets.")
    # Admin is a per-tenant scope: another tenant's key answers like an unknown one, so key
    # ids of other tenants cannot be probed.
    owner = keys.get(key_id)
    if owner is None or owner.tenant_id != principal.tenant_id:
        raise TesseraError(ErrorCode.forbidden, f"Key {key_id!r} is not one of your tenant's.")
    return key_id


OutboxDep = Annotated[WebhookOutbox, Depends(get_outbox)]
LedgerDep = Annotated[DeliveryLedger, Depends(get_ledger)]
SecretsDep = Annotated[WebhookSecretStore, Depends(get_secrets)]
SecretOwnerDep = Annotated[str, Depends(secret_owner)]


@router.get("/jobs/{job_id}/deliveries", response_model=DeliveryLogPublic,
            summary="A job's webhook events and delivery attempts")
def get_deliveries(job: JobDep, outbox: OutboxDep, ledger: LedgerDep) -> DeliveryLogPublic:
    """Each event (with its sequence and whether it was delivered) and each attempt: time,
    status, latency, error and outcome."""
    events = [WebhookEventPublic(**event.model_dump(), delivered=ledger.delivered(event.id))
              for event in outbox.events(job.id)]
    return DeliveryLogPublic(job_id=job.id, webhook_url=job.webhook_url and str(job.webhook_url),
                             events=events, attempts=ledger.attempts(job.id))


@router.post("/jobs/{job_id}/deliveries/{event_id}/redeliver", status_code=202,
             response_model=RedeliveryPublic, summary="Send one webhook event again now")
def redeliver(job: OwnJobDep, event_id: str, outbox: OutboxDep) -> RedeliveryPublic:
    """Queue the event for delivery now, even if it was delivered or its URL disabled."""
    if outbox.get(job.id, event_id) is None:
        raise TesseraError(ErrorCode.webhook_event_not_found,
                           f"Job {job.id} has no webhook event {event_id!r}.")
    outbox.schedule(WebhookDelivery(job_id=job.id, event_id=event_id, force=True), time.time())
    return RedeliveryPublic(job_id=job.id, event_id=event_id)


@router.post("/webhook-secret/rotate", response_model=RotatedSecret,
             summary="Replace the webhook signing secret; the old one signs too for a while")
def rotate_secret(rotation: SecretRotation, key_id: SecretOwnerDep,
                  secrets: SecretsDep) -> RotatedSecret:
    """A new `whsec_` secret, shown only in this answer; until the overlap ends, webhooks carry
    a signature by the new and one by the old secret."""
    return secrets.rotate(key_id, overlap_seconds=rotation.overlap_seconds)


@router.get("/webhook-secret", response_model=WebhookSecretInfo,
            summary="When the webhook signing secret was made and the old one stops signing")
def describe_secret(key_id: SecretOwnerDep, secrets: SecretsDep) -> WebhookSecretInfo:
    """Metadata only, never a secret."""
    return secrets.describe(key_id)

