"""Stage leases: which run of a task holds a job's stage now, so it is restarted if it dies.

Celery redelivers a task whose pool child died at once, but a task whose whole worker died
only after the broker's visibility timeout (an hour or more). A lease held while a stage runs,
renewed by a heartbeat and re-queued by any worker once it lapses, bounds that gap to seconds.
A redelivered copy of a task whose lease is held by a live process is dropped, so a job never
runs twice at the same time.
"""

import os
import socket
import time
import uuid
from typing import cast

import redis


def this_worker() -> str:
    """The id of the current process: "host/pid"."""
    return f"{socket.gethostname()}/{os.getpid()}"


def new_holder() -> str:
    """A lease holder id for one run of a task: "host/pid#run" (a process runs tasks on
    several threads, so the process alone does not tell two runs apart)."""
    return f"{this_worker()}#{uuid.uuid4().hex[:12]}"


def holder_is_dead(holder: str) -> bool:
    """True when holder ran in a process on this host that no longer exists."""
    host, _, pid = holder.partition("#")[0].rpartition("/")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# Push back the expiry of a lease only while ARGV[2] holds it (1); a lease that lapsed and was
# taken over or dropped is left alone (0), so a run woken from a freeze cannot keep it alive.
_RENEW_IF_HELD = """
if redis.call('HGET', KEYS[2], 'worker') ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
return 1
"""

# Take a lease whose expiry is still past (1) from its silent holder, keeping its entry due again
# at ARGV[3] in case the taker dies before re-queuing the stage; leave a renewed one alone (0).
_TAKE_IF_LAPSED = """
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry or tonumber(expiry) > tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""
# Drop a taken lease once its stage is re-queued, unless a new run holds it already.
_SETTLE_TAKEN = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
return redis.call('ZREM', KEYS[1], ARGV[1])
"""


class LeaseBook:
    """Leases in Redis: a sorted set of expiry times and one hash per lease (a job's stage)."""

    def __init__(self, client: redis.Redis, prefix: str, seconds: float) -> None:
        self.redis = client
        self.prefix = prefix
        self.seconds = seconds
        self._expiries = f"{prefix}:leases"
        self._take_if_lapsed = client.register_script(_TAKE_IF_LAPSED)
        self._renew_if_held = client.register_script(_RENEW_IF_HELD)
        self._settle_taken = client.register_script(_SETTLE_TAKEN)

    def _key(self, lease_id: str) -> str:
        return f"{self.prefix}:lease:{lease_id}"

    def acquire(self, lease_id: str, worker: str) -> str | None:
        """Take the lease for worker (a holder id from new_holder); returns the live holder
        instead when another run has it."""
        key = self._key(lease_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key, self._expiries)
                    holder = cast(str | None, pipe.hget(key, "worker"))
                    expires = pipe.zscore(self._expiries, lease_id)
                    if (holder and holder != worker and expires is not None
                            and expires > time.time() and not holder_is_dead(holder)):
                        pipe.unwatch()
                        return holder
                    pipe.multi()
                    pipe.hset(key, "worker", worker)
                    pipe.zadd(self._expiries, {lease_id: time.time() + self.seconds})
                    pipe.execute()
                    return None
                except redis.WatchError:
                    continue

    def renew(self, holders: dict[str, str]) -> list[str]:
        """Push back the expiry of each lease (id → holder) its holder still has; returns the
        ids it no longer has (taken over after lapsing), whose runs must stop."""
        expiry = time.time() + self.seconds
        return [lease_id for lease_id, holder in holders.items()
                if not self._renew_if_held(keys=[self._expiries, self._key(lease_id)],
                                           args=[lease_id, holder, expiry])]

    def live(self, lease_id: str) -> bool:
        """True while some run holds the lease and renews it."""
        expires = self.redis.zscore(self._expiries, lease_id)
        return expires is not None and expires > time.time()

    def release(self, lease_id: str, worker: str) -> None:
        """Drop the lease if worker still holds it."""
        key = self._key(lease_id)
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(key)
                if pipe.hget(key, "worker") != worker:
                    pipe.unwatch()
                    return
                pipe.multi()
                pipe.delete(key)
                pipe.zrem(self._expiries, lease_id)
                pipe.execute()
            except redis.WatchError:
                pass  # someone took the lease over meanwhile: it is theirs now

    def take_lapsed(self, limit: int = 50) -> list[str]:
        """Claim lapsed leases (each by one caller only) and return their ids to re-queue; call
        settle_taken once a stage is re-queued (an unsettled one lapses again and is retaken)."""
        now = time.time()
        lapsed = cast(list[str], self.redis.zrangebyscore(self._expiries, 0, now,
                                                          start=0, num=limit))
        # Atomic: a lease renewed or re-taken since the read above is left alone.
        return [lease_id for lease_id in lapsed
                if self._take_if_lapsed(keys=[self._expiries, self._key(lease_id)],
                                        args=[lease_id, now, now + self.seconds])]

    def settle_taken(self, lease_id: str) -> None:
        """Forget a lease taken from a silent holder now that its stage is re-queued."""
        self._settle_taken(keys=[self._expiries, self._key(lease_id)], args=[lease_id])
