"""Idempotency-Key handling: a replayed request returns the job the first one created."""

import hashlib
import json
from dataclasses import dataclass
from typing import cast

import redis

from shared.errors import ErrorCode, TesseraError

# A key is remembered this long after its job was accepted (documented in the README).
KEY_TTL_SECONDS = 24 * 3600
def fingerprint(fields: dict[str, object], file_digests: list[tuple[str, str]]) -> str:
    """A digest of what a request asks for: its fields and each file's name and content hash."""
    canonical = json.dumps({"fields": fields, "files": file_digests}, sort_keys=True,
                           default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class IdempotencyKeys:
    """Idempotency keys per tenant in Redis; a first request still being accepted holds its
    key at most pending_seconds (longer than accepting can take, or a retry could slip in)."""

    redis: redis.Redis
    prefix: str
    pending_seconds: float

    def _key(self, tenant_id: str, key: str) -> str:
        return f"{self.prefix}:idem:{tenant_id}:{hashlib.sha256(key.encode()).hexdigest()}"

    def begin(self, tenant_id: str, key: str, request_digest: str) -> str | None:
        """Reserve the key; returns the job id of an earlier identical request instead."""
        name = self._key(tenant_id, key)
        pending = json.dumps({"digest": request_digest, "job_id": None})
        if self.redis.set(name, pending, nx=True, ex=int(self.pending_seconds)):
            return None
        raw = cast(str | None, self.redis.get(name))
        if raw is None:  # expired between the two calls: take it now
            return self.begin(tenant_id, key, request_digest)
        stored = json.loads(raw)
        if stored["digest"] != request_digest:
            raise TesseraError(ErrorCode.idempotency_key_reused,
                               "This Idempotency-Key was first used with a different request "
                               "body; use a new key for a different request.")
        if stored["job_id"] is None:
            raise TesseraError(ErrorCode.idempotency_key_in_progress,
                               "The first request with this Idempotency-Key is still being "
                               "accepted; retry in a moment.", retry_after_seconds=1)
        return str(stored["job_id"])

    def finish(self, tenant_id: str, key: str, request_digest: str, job_id: str) -> None:
        """Remember which job the key created."""
        self.redis.set(self._key(tenant_id, key),
                       json.dumps({"digest": request_digest, "job_id": job_id}),
                       ex=KEY_TTL_SECONDS)

    def abort(self, tenant_id: str, key: str) -> None:
        """Release a key whose request failed, so the client can try again with it."""
        self.redis.delete(self._key(tenant_id, key))
