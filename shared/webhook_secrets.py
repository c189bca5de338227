"""Webhook signing secrets per API key, with rotation: the previous secret stays active (and
signs too) until its overlap ends; a key without its own secret uses the deployment's."""

import base64
import secrets
from datetime import datetime, timedelta
from typing import Literal, cast

import redis
from pydantic import BaseModel

from shared.job_store import utcnow
from shared.webhook_signing import SECRET_PREFIX


class StoredSecret(BaseModel):
    """One signing secret; None as the value stands for the deployment's WEBHOOK_SECRET."""

    value: str | None
    created_at: datetime | None
    expires_at: datetime | None = None


class KeySecrets(BaseModel):
    """A key's current secret and the one it replaced, while that one is still honoured."""

    current: StoredSecret
    previous: StoredSecret | None = None


class WebhookSecretInfo(BaseModel):
    """What a client may see about its signing secrets: never the secrets themselves."""

    key_id: str
    # "deployment": signed with WEBHOOK_SECRET until the key rotates its own.
    source: Literal["deployment", "key"]
    created_at: datetime | None
    previous_expires_at: datetime | None


class RotatedSecret(WebhookSecretInfo):
    """The answer to a rotation: the new secret, shown this once."""

    secret: str


def new_secret() -> str:
    """A fresh Standard Webhooks secret: whsec_ + 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


class WebhookSecretStore:
    """Signing secrets per API key id in Redis."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix

    def _key(self, key_id: str) -> str:
        return f"{self.prefix}:webhook-secret:{key_id}"

    def load(self, key_id: str,
             via: redis.Redis | redis.client.Pipeline | None = None) -> KeySecrets:
        """The key's secrets (read through via, e.g. a watching pipeline); the deployment's
        secret alone when the key never rotated."""
        raw = cast(str | None, (via or self.redis).get(self._key(key_id)))
        if raw is None:
            return KeySecrets(current=StoredSecret(value=None, created_at=None))
        return KeySecrets.model_validate_json(raw)

    def rotate(self, key_id: str, *, overlap_seconds: int) -> RotatedSecret:
        """Make a new current secret; the old one keeps signing for overlap_seconds."""
        secret, now = new_secret(), utcnow()
        stored: KeySecrets | None = None

        def swap(pipe: redis.client.Pipeline) -> None:
            nonlocal stored
            old = self.load(key_id, via=pipe).current
            previous = (old.model_copy(update={"expires_at": now + timedelta(
                seconds=overlap_seconds)}) if overlap_seconds > 0 else None)
            stored = KeySecrets(current=StoredSecret(value=secret, created_at=now),
                                previous=previous)
            pipe.multi()
            pipe.set(self._key(key_id), stored.model_dump_json())

        # WATCH/MULTI: two rotations at once must not both keep the same "previous".
        self.redis.transaction(swap, self._key(key_id))
        assert stored is not None
        return RotatedSecret(**_info(key_id, stored).model_dump(), secret=secret)

    def describe(self, key_id: str) -> WebhookSecretInfo:
        """Metadata of the key's secrets, safe to show."""
        return _info(key_id, self.load(key_id))

    def signing_secrets(self, key_id: str, *, deployment_secret: str) -> list[str]:
        """Every secret that signs this key's webhooks now: the current one first."""
        stored, now = self.load(key_id), utcnow()
        active = [stored.current, *filter(None, [_live(stored.previous, now)])]
        return list(dict.fromkeys(item.value or deployment_secret for item in active))


def _info(key_id: str, stored: KeySecrets) -> WebhookSecretInfo:
    """Metadata of stored secrets (a lapsed previous secret is not mentioned)."""
    previous = _live(stored.previous, utcnow())
    return WebhookSecretInfo(
        key_id=key_id, source="deployment" if stored.current.value is None else "key",
        created_at=stored.current.created_at,
        previous_expires_at=previous.expires_at if previous is not None else None)


def _live(secret: StoredSecret | None, now: datetime) -> StoredSecret | None:
    if secret is None or (secret.expires_at is not None and secret.expires_at <= now):
        return None
    return secret
