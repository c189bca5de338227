"""Batches: many jobs submitted together, each known by the client's custom_id."""

from datetime import datetime
from typing import cast

import redis
from pydantic import BaseModel

from shared.job_store import JobNotFound, JobStore
from shared.schemas import JobRecord, JobStatus

# Batches are kept as long as the longest job retention a client may ask for.
BATCH_TTL_SECONDS = 90 * 24 * 3600


class BatchItem(BaseModel):
    """One request of a batch and the job it became."""

    custom_id: str
    job_id: str


class BatchRecord(BaseModel):
    """A stored batch."""

    id: str
    tenant_id: str
    created_at: datetime
    items: list[BatchItem]


class BatchPublic(BaseModel):
    """A batch as clients see it: how many of its jobs are in each state."""

    id: str
    created_at: datetime
    total: int
    finished: int
    counts: dict[JobStatus, int]
    # Jobs whose retention ended (their results are gone).
    purged: int
    results_url: str


class BatchStore:
    """Batch records in Redis, reading their jobs from the job store."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs
        self.redis: redis.Redis = jobs.redis

    def _key(self, batch_id: str) -> str:
        return f"{self.jobs.prefix}:batch:{batch_id}"

    def create(self, batch: BatchRecord) -> None:
        """Store a new batch."""
        self.redis.set(self._key(batch.id), batch.model_dump_json(), ex=BATCH_TTL_SECONDS)

    def get(self, batch_id: str) -> BatchRecord | None:
        """The stored batch, or None."""
        raw = cast(str | None, self.redis.get(self._key(batch_id)))
        return None if raw is None else BatchRecord.model_validate_json(raw)

    def jobs_of(self, batch: BatchRecord) -> list[tuple[BatchItem, JobRecord | None]]:
        """Each item with its job (None once the job was purged by retention)."""
        found: list[tuple[BatchItem, JobRecord | None]] = []
        for item in batch.items:
            try:
                found.append((item, self.jobs.get(item.job_id)))
            except JobNotFound:
                found.append((item, None))
        return found


def batch_public(batch: BatchRecord, jobs: list[tuple[BatchItem, JobRecord | None]],
                 base_url: str) -> BatchPublic:
    """The public view of a batch from its items' jobs (None for a purged job)."""
    counts: dict[JobStatus, int] = {}
    for _, record in jobs:
        if record is not None:
            counts[record.status] = counts.get(record.status, 0) + 1
    purged = sum(record is None for _, record in jobs)
    finished = purged + sum(count for status, count in counts.items() if status.terminal)
    return BatchPublic(id=batch.id, created_at=batch.created_at, total=len(batch.items),
                       finished=finished, counts=counts, purged=purged,
                       results_url=f"{base_url.rstrip('/')}/v1/batches/{batch.id}/results")
