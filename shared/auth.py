"""API keys: stored hashed, each belonging to a tenant with scopes; the caller as a Principal."""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import cast

import redis
from pydantic import BaseModel, Field

from shared.job_store import utcnow

TOKEN_PREFIX = "tsk_"


class Scope(StrEnum):
    """What an API key may do."""

    submit = "submit"
    read = "read"
    admin = "admin"


class ApiKeyRecord(BaseModel):
    """A stored API key (its secret is kept only as a hash)."""

    key_id: str
    tenant_id: str
    name: str
    scopes: list[Scope]
    created_at: datetime
    rate_limit_per_minute: int | None = Field(default=None, ge=1)


@dataclass(frozen=True)
class Principal:
    """The caller of an API request."""

    key_id: str
    tenant_id: str
    scopes: frozenset[Scope]
    rate_limit_per_minute: int | None = None


def _digest(token: str) -> str:
    # Keys are 192 random bits: a fast hash is enough, and lookups stay O(1).
    return hashlib.sha256(token.encode()).hexdigest()


class ApiKeyStore:
    """API keys in Redis, found by the hash of the presented token."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix

    def create(self, *, tenant_id: str, scopes: list[Scope], name: str = "",
               rate_limit_per_minute: int | None = None) -> tuple[str, ApiKeyRecord]:
        """Make a new key; the plaintext token is returned once and never stored."""
        key_id = secrets.token_hex(6)
        token = f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"
        record = ApiKeyRecord(key_id=key_id, tenant_id=tenant_id, name=name, scopes=scopes,
                              created_at=utcnow(), rate_limit_per_minute=rate_limit_per_minute)
        with self.redis.pipeline() as pipe:
            pipe.set(f"{self.prefix}:apikey:{_digest(token)}", record.model_dump_json())
            pipe.set(f"{self.prefix}:apikey-id:{key_id}", _digest(token))
            pipe.execute()
        return token, record

    def authenticate(self, token: str) -> Principal | None:
        """The principal a token stands for, or None for an unknown or revoked key."""
        raw = cast(str | None, self.redis.get(f"{self.prefix}:apikey:{_digest(token)}"))
        if raw is None:
            return None
        record = ApiKeyRecord.model_validate_json(raw)
        return Principal(record.key_id, record.tenant_id, frozenset(record.scopes),
                         record.rate_limit_per_minute)

    def get(self, key_id: str) -> ApiKeyRecord | None:
        """The stored key with this id, or None for an unknown or revoked one."""
        digest = cast(str | None, self.redis.get(f"{self.prefix}:apikey-id:{key_id}"))
        if digest is None:
            return None
        raw = cast(str | None, self.redis.get(f"{self.prefix}:apikey:{digest}"))
        return None if raw is None else ApiKeyRecord.model_validate_json(raw)

    def revoke(self, key_id: str) -> bool:
        """Delete a key; True when it existed."""
        digest = cast(str | None, self.redis.get(f"{self.prefix}:apikey-id:{key_id}"))
        if digest is None:
            return False
        self.redis.delete(f"{self.prefix}:apikey:{digest}", f"{self.prefix}:apikey-id:{key_id}")
        return True
