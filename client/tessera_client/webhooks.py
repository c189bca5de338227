"""Verifying Tessera's webhooks (Standard Webhooks signatures), with several secrets in rotation."""

from collections.abc import Mapping, Sequence
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

__all__ = ["WebhookVerificationError", "verify_webhook"]


def verify_webhook(secret_or_secrets: str | Sequence[str], headers: Mapping[str, str],
                   body: bytes | str) -> Any:
    """The parsed payload when any secret signed it within the last five minutes; otherwise
    WebhookVerificationError. Pass the new and the old secret while rotating."""
    secrets = [secret_or_secrets] if isinstance(secret_or_secrets, str) else secret_or_secrets
    if not secrets:
        raise ValueError("verify_webhook needs at least one secret")
    plain_headers = {name.lower(): value for name, value in headers.items()}
    failure = WebhookVerificationError("No matching signature found")
    for secret in secrets:
        try:
            return Webhook(secret).verify(body, plain_headers)
        except WebhookVerificationError as error:
            failure = error
    raise failure
