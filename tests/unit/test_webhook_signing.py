"""Our Standard Webhooks signatures verify with the reference `standardwebhooks` package."""

import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from shared.webhook_signing import signature_headers, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_signature_verifies_with_the_reference_implementation() -> None:
    body = b'{"type":"job.succeeded"}'
    headers = signature_headers(SECRET, "evt_1", int(time.time()), body)
    Webhook(SECRET).verify(body, headers)
    assert verify(SECRET, headers, body)


def test_tampered_body_fails_verification() -> None:
    headers = signature_headers(SECRET, "evt_1", int(time.time()), b"{}")
    assert not verify(SECRET, headers, b'{"x":1}')
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(b'{"x":1}', headers)


def test_reference_signature_verifies_with_ours() -> None:
    timestamp = int(time.time())
    from datetime import UTC, datetime

    signature = Webhook(SECRET).sign("msg_2", datetime.fromtimestamp(timestamp, UTC), "hello")
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(timestamp),
               "webhook-signature": signature}
    assert verify(SECRET, headers, b"hello")
