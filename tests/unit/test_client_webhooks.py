"""Webhook verification in the client, including two secrets during a rotation."""

import base64
import json
import time

import pytest

from shared.webhook_signing import sign
from tessera_client.webhooks import WebhookVerificationError, verify_webhook

OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
OTHER = "whsec_" + base64.b64encode(b"x" * 32).decode()
BODY = json.dumps({"type": "job.succeeded", "data": {"id": "job_1"}}).encode()


def _headers(*secrets: str, timestamp: int | None = None) -> dict[str, str]:
    """Headers as the webhook worker sends them, one signature per signing secret."""
    at = timestamp or int(time.time())
    return {"webhook-id": "evt_job_1_succeeded", "webhook-timestamp": str(at),
            "webhook-signature": " ".join(sign(s, "evt_job_1_succeeded", at, BODY)
                                          for s in secrets)}


def test_verify_accepts_a_message_signed_by_either_secret_in_rotation() -> None:
    assert verify_webhook([NEW, OLD], _headers(OLD), BODY) == json.loads(BODY)
    assert verify_webhook([NEW, OLD], _headers(NEW), BODY)["data"]["id"] == "job_1"


def test_verify_accepts_a_message_signed_with_both_secrets_by_one_of_them() -> None:
    assert verify_webhook(OLD, _headers(NEW, OLD), BODY)["type"] == "job.succeeded"


def test_verify_accepts_one_secret_and_headers_in_any_case() -> None:
    headers = {name.title(): value for name, value in _headers(NEW).items()}
    assert verify_webhook(NEW, headers, BODY.decode())["type"] == "job.succeeded"


def test_verify_rejects_an_unknown_secret_and_a_tampered_body() -> None:
    with pytest.raises(WebhookVerificationError):
        verify_webhook([NEW, OLD], _headers(OTHER), BODY)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(NEW, _headers(NEW), BODY.replace(b"job_1", b"job_2"))


def test_verify_rejects_a_replayed_old_message() -> None:
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_webhook(NEW, _headers(NEW, timestamp=int(time.time()) - 3600), BODY)


def test_verify_needs_a_secret() -> None:
    with pytest.raises(ValueError):
        verify_webhook([], _headers(NEW), BODY)
