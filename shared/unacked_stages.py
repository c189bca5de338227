"""Stage tasks that workers took from the broker and have not acknowledged: kombu's Redis
transport keeps each in its `unacked` hash (with the time it was taken in `unacked_index`) and
returns it to its queue only after the visibility timeout, an hour. A worker that died holding a
task it had not started yet, or one that took more tasks than it can run after reconnecting,
would make that job wait the hour; housekeeping finds them here and sends their stage again."""

import base64
import json
import time
from dataclasses import dataclass
from typing import cast

import redis

from shared.job_store import WorkStage
from shared.queues import INFERENCE_TASK, PREPROCESS_TASK

# kombu's Redis transport key names (Channel.unacked_key, Channel.unacked_index_key).
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
_STAGES: dict[str, WorkStage] = {PREPROCESS_TASK: "preprocess", INFERENCE_TASK: "inference"}


@dataclass(frozen=True)
class UnackedStage:
    """A stage task held by some worker since taken_at (Unix time)."""

    delivery_tag: str
    job_id: str
    stage: WorkStage
    taken_at: float


def unacked_stages(client: redis.Redis, *, older_than: float,
                   limit: int = 200) -> list[UnackedStage]:
    """Stage tasks taken from the broker more than older_than seconds ago and not acknowledged
    (running, waiting in a worker, or left by a dead one)."""
    entries = cast(list[tuple[str, float]], client.zrangebyscore(
        UNACKED_INDEX, 0, time.time() - older_than, start=0, num=limit, withscores=True))
    if not entries:
        return []
    raws = cast(list[str | None], client.hmget(UNACKED, [tag for tag, _ in entries]))
    found = []
    for (tag, taken_at), raw in zip(entries, raws, strict=True):
        stage_task = _stage_task(raw) if raw is not None else None
        if stage_task is not None:
            found.append(UnackedStage(tag, *stage_task, taken_at))
    return found


def _stage_task(raw: str) -> tuple[str, WorkStage] | None:
    """The job id and stage of a stored message, if it is one of our stage tasks."""
    message = json.loads(raw)[0]
    stage = _STAGES.get(message.get("headers", {}).get("task"))
    if stage is None:
        return None
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    _, kwargs, _ = json.loads(body)
    job_id = kwargs.get("job_id")
    return (job_id, stage) if isinstance(job_id, str) else None
