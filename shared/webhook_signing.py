"""Standard Webhooks signatures: HMAC-SHA256 over "id.timestamp.body" with a whsec_ secret."""

import base64
import hashlib
import hmac

SECRET_PREFIX = "whsec_"


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64 signature>` of a message."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(secrets: list[str], message_id: str, timestamp: int,
                      body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers, one signature per secret (rotation overlap)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(secret, message_id, timestamp, body)
                                      for secret in secrets),
    }


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """True when any v1 signature in the headers matches body (constant-time comparison)."""
    expected = sign(secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body)
    return any(hmac.compare_digest(candidate, expected)
               for candidate in headers["webhook-signature"].split())
