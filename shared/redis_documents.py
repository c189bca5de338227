"""Pydantic documents stored as JSON in Redis, changed atomically with optimistic locking."""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import redis
from pydantic import BaseModel

D = TypeVar("D", bound=BaseModel)


def update_document(client: redis.Redis, key: str, model: type[D],
                    mutate: Callable[[D], D | None], *, missing: Callable[[], Exception],
                    also: Callable[[redis.client.Pipeline, D, D], None] | None = None,
                    ) -> tuple[D, D | None]:
    """Apply mutate to the document at key (WATCH/MULTI, retried on conflict).

    Returns (before, after); after is None when mutate returned None (nothing written). `also`
    adds commands to the same transaction; a missing document raises missing().
    """
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                raw = pipe.get(key)
                if raw is None:
                    raise missing()
                before = model.model_validate_json(raw)
                after = mutate(before.model_copy(deep=True))
                if after is None:
                    pipe.unwatch()
                    return before, None
                # Every stored document here carries updated_at (job and upload records).
                after.updated_at = datetime.now(UTC)  # type: ignore[attr-defined]
                pipe.multi()
                pipe.set(key, after.model_dump_json(), keepttl=True)
                if also is not None:
                    also(pipe, before, after)
                pipe.execute()
                return before, after
            except redis.WatchError:
                continue
