"""Our Standard Webhooks signatures verify with the reference `standardwebhooks` package."""

import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from shared.webhook_secrets import new_secret
from shared.webhook_signing import signature_headers, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_signature_verifies_with_the_reference_implementation() -> None:
    body = b'{"type":"job.succeeded"}'
    headers = signature_headers([SECRET], "evt_1", int(time.time()), body)
    Webhook(SECRET).verify(body, headers)
    assert verify(SECRET, headers, body)


def test_tampered_body_fails_verification() -> None:
    headers = signature_headers([SECRET], "evt_1", int(time.time()), b"{}")
    assert not verify(SECRET, headers, b'{"x":1}')
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(b'{"x":1}', headers)


def test_reference_signature_verifies_with_ours() -> None:
    timestamp = int(time.time())
    signature = Webhook(SECRET).sign("msg_2", datetime.fromtimestamp(timestamp, UTC), "hello")
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(timestamp),
               "webhook-signature": signature}
    assert verify(SECRET, headers, b"hello")


def test_rotation_overlap_signs_with_both_secrets_each_verifiable_alone() -> None:
    old, new = SECRET, new_secret()
    body = b'{"type":"job.progress"}'
    headers = signature_headers([new, old], "evt_3", int(time.time()), body)
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (old, new):
        Webhook(secret).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
