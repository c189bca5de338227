"""Idempotency-Key handling: a replayed request returns the job the first one created."""

import hashlib
import json
import logging
import math
import threading
import uuid
from types import TracebackType
from typing import cast

import redis

from shared.errors import ErrorCode, TesseraError

logger = logging.getLogger(__name__)

# A key is remembered this long after its job was accepted (documented in the README).
KEY_TTL_SECONDS = 24 * 3600
# A first request holds its key this long at a time, renewed while it runs: a request that
# died (its process killed, Redis lost) frees the key within this time, not after a timeout
# sized for the slowest request.
CLAIM_SECONDS = 10.0
# Extend the claim only while this request still holds it (its value carries a nonce).
_RENEW_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def fingerprint(fields: dict[str, object], file_digests: list[tuple[str, str]]) -> str:
    """A digest of what a request asks for: its fields and each file's name and content hash."""
    canonical = json.dumps({"fields": fields, "files": file_digests}, sort_keys=True,
                           default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyKeys:
    """Idempotency keys per tenant in Redis."""

    def __init__(self, client: redis.Redis, prefix: str,
                 claim_seconds: float = CLAIM_SECONDS) -> None:
        self.redis = client
        self.prefix = prefix
        self.claim_seconds = claim_seconds
        self._renew_if_held = client.register_script(_RENEW_IF_HELD)

    def _key(self, tenant_id: str, key: str) -> str:
        return f"{self.prefix}:idem:{tenant_id}:{hashlib.sha256(key.encode()).hexdigest()}"

    def begin(self, tenant_id: str, key: str, request_digest: str) -> "Claim | str":
        """Claim the key for this request, or return the job id of an earlier identical
        request; refused while another request holds it or when it was used differently."""
        name = self._key(tenant_id, key)
        pending = json.dumps({"digest": request_digest, "job_id": None,
                              "claim": uuid.uuid4().hex})
        if self.redis.set(name, pending, nx=True, px=int(self.claim_seconds * 1000)):
            return Claim(self, name, pending)
        raw = cast(str | None, self.redis.get(name))
        if raw is None:  # expired between the two calls: take it now
            return self.begin(tenant_id, key, request_digest)
        stored = json.loads(raw)
        if stored["digest"] != request_digest:
            raise TesseraError(ErrorCode.idempotency_key_reused,
                               "This Idempotency-Key was first used with a different request "
                               "body; use a new key for a different request.")
        if stored["job_id"] is None:
            held_ms = int(self.redis.pttl(name))
            raise TesseraError(ErrorCode.idempotency_key_in_progress,
                               "The first request with this Idempotency-Key is still being "
                               "accepted; retry in a moment.",
                               retry_after_seconds=max(1, math.ceil(held_ms / 1000)))
        return str(stored["job_id"])

    def renew(self, name: str, value: str) -> bool:
        """Extend a claim; False when it is no longer held by value."""
        return bool(self._renew_if_held(keys=[name],
                                        args=[value, int(self.claim_seconds * 1000)]))


class Claim:
    """A first request's hold on its key: renewed by a thread while the request runs, then
    turned into the key's answer (finish) or given up (release)."""

    def __init__(self, keys: IdempotencyKeys, name: str, value: str) -> None:
        self.keys = keys
        self.name = name
        self.value = value
        self._done = threading.Event()
        self._renewer = threading.Thread(target=self._renew, daemon=True,
                                         name="idempotency-claim")

    def __enter__(self) -> "Claim":
        self._renewer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._done.set()
        self._renewer.join()

    def finish(self, request_digest: str, job_id: str) -> None:
        """Remember which job the key created."""
        self.keys.redis.set(self.name,
                            json.dumps({"digest": request_digest, "job_id": job_id}),
                            ex=KEY_TTL_SECONDS)

    def release(self) -> None:
        """Give the key up (the request failed), so the client can try again with it."""
        self.keys.redis.delete(self.name)

    def _renew(self) -> None:
        while not self._done.wait(self.keys.claim_seconds / 3):
            try:
                if not self.keys.renew(self.name, self.value):
                    return  # lapsed (Redis was unreachable longer than a claim) or released
            except redis.RedisError as error:
                logger.warning("could not renew idempotency claim: %s", error)
