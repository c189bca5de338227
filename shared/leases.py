"""Stage leases: which process runs a job's stage now, and the task that restarts it if it dies.

Celery redelivers a task whose pool child died at once, but a task whose whole worker died
only after the broker's visibility timeout (an hour or more). A lease held while a stage runs,
renewed by a heartbeat and re-queued by any worker once it lapses, bounds that gap to seconds.
A redelivered copy of a task whose lease is held by a live process is dropped, so a job never
runs twice at the same time.
"""

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, cast

import redis


@dataclass(frozen=True)
class StageTask:
    """The Celery task that (re)starts a stage of a job."""

    name: str
    queue: str
    kwargs: dict[str, Any]


def this_worker() -> str:
    """The id of the current process as a lease holder: "host/pid"."""
    return f"{socket.gethostname()}/{os.getpid()}"


def holder_is_dead(holder: str) -> bool:
    """True when holder is a process on this host that no longer exists."""
    host, _, pid = holder.rpartition("/")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class LeaseBook:
    """Leases in Redis: a sorted set of expiry times and one hash per lease (a job's stage)."""

    def __init__(self, client: redis.Redis, prefix: str, seconds: float) -> None:
        self.redis = client
        self.prefix = prefix
        self.seconds = seconds
        self._expiries = f"{prefix}:leases"

    def _key(self, lease_id: str) -> str:
        return f"{self.prefix}:lease:{lease_id}"

    def acquire(self, lease_id: str, worker: str, task: StageTask) -> str | None:
        """Take the lease for worker; returns the live holder instead when another has it."""
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
                    pipe.hset(key, mapping={
                        "worker": worker,
                        "task": json.dumps({"name": task.name, "queue": task.queue,
                                            "kwargs": task.kwargs}),
                    })
                    pipe.zadd(self._expiries, {lease_id: time.time() + self.seconds})
                    pipe.execute()
                    return None
                except redis.WatchError:
                    continue

    def renew(self, lease_ids: list[str]) -> None:
        """Push back the expiry of leases this process holds."""
        if lease_ids:
            expiry = time.time() + self.seconds
            self.redis.zadd(self._expiries, dict.fromkeys(lease_ids, expiry), xx=True)

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

    def take_lapsed(self, limit: int = 50) -> list[StageTask]:
        """Claim lapsed leases (each by one caller only) and return the tasks to re-queue."""
        lapsed = cast(list[str], self.redis.zrangebyscore(self._expiries, 0, time.time(),
                                                          start=0, num=limit))
        tasks = []
        for lease_id in lapsed:
            # Whoever removes the entry re-queues the task; the others skip it.
            if not self.redis.zrem(self._expiries, lease_id):
                continue
            raw = cast(str | None, self.redis.hget(self._key(lease_id), "task"))
            self.redis.delete(self._key(lease_id))
            if raw is not None:
                spec = json.loads(raw)
                tasks.append(StageTask(spec["name"], spec["queue"], spec["kwargs"]))
        return tasks
