"""Where a waiting job stands in its queue, and when it may start at the recent pace."""

import time
from datetime import datetime, timedelta
from typing import cast

import redis

from shared.job_store import utcnow
from shared.queues import PREPROCESS_QUEUE, inference_queue, priority_lists
from shared.schemas import JobRecord, JobStatus, QueuePosition

# Messages read at most to find a job; beyond that its position is reported as "more than".
SCAN_LIMIT = 5000
# The window over which the start rate of a queue is measured.
PACE_WINDOW_MINUTES = 5


def waiting_queue(record: JobRecord) -> str | None:
    """The queue a job is waiting in, or None when it is running or over."""
    if record.status is JobStatus.queued:
        return PREPROCESS_QUEUE
    if (record.status is JobStatus.preprocessing
            and record.times.preprocess_finished_at is not None):
        return inference_queue(record.model)
    return None


def record_start(client: redis.Redis, queue: str) -> None:
    """Count one stage start from queue in the current minute (for the pace estimate)."""
    key = f"{queue}:starts:{int(time.time() // 60)}"
    with client.pipeline() as pipe:
        pipe.incr(key)
        pipe.expire(key, 60 * (PACE_WINDOW_MINUTES + 1))
        pipe.execute()


def queue_position(client: redis.Redis, queue: str, job_id: str) -> QueuePosition | None:
    """How many messages are served before the job's in queue; None when it is not there.

    Celery on Redis serves lower priority numbers first and each list from its tail, so
    ahead of a message are every message of higher-priority lists and those nearer the tail.
    """
    ahead, needle = 0, f"'job_id': '{job_id}'"
    for name in priority_lists(queue):
        messages = cast(list[str], client.lrange(name, 0, SCAN_LIMIT - 1))
        for index, message in enumerate(messages):
            if needle in message:
                ahead += len(messages) - 1 - index
                return QueuePosition(queue=queue, ahead=ahead,
                                     estimated_start_at=_estimate(client, queue, ahead))
        ahead += len(messages)
    return None


def _estimate(client: redis.Redis, queue: str, ahead: int) -> datetime | None:
    """At the pace stages started lately; None when nothing started lately."""
    minute = int(time.time() // 60)
    keys = [f"{queue}:starts:{minute - offset}" for offset in range(PACE_WINDOW_MINUTES)]
    started = sum(int(count) for count in cast(list[str | None], client.mget(keys)) if count)
    if not started:
        return None
    per_second = started / (PACE_WINDOW_MINUTES * 60)
    return utcnow() + timedelta(seconds=(ahead + 1) / per_second)
