"""Waiting for a job to finish within a bound: `Prefer: wait=N` and long-polling reads."""

import re
import time

from shared.job_store import JobStore
from shared.schemas import JobRecord

# Longest wait a request may ask for: beyond this, clients should use events or webhooks.
MAX_WAIT_SECONDS = 60.0
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d+(?:\.\d+)?)")


def preferred_wait(prefer: str | None) -> float | None:
    """The seconds an RFC 7240 `Prefer: wait=N` header asks for, capped; None when absent."""
    match = _PREFER_WAIT.search(prefer or "")
    return min(float(match.group(1)), MAX_WAIT_SECONDS) if match else None


def wait_until_finished(jobs: JobStore, record: JobRecord, seconds: float) -> JobRecord:
    """The job once it ended, or as it is when seconds have passed (blocks on its events)."""
    deadline = time.monotonic() + min(seconds, MAX_WAIT_SECONDS)
    cursor = "$"
    # Re-read after choosing "$": a job that ended before then would otherwise be waited on.
    record = jobs.get(record.id)
    while not record.status.terminal:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        events = jobs.read_events(record.id, after=cursor, block_seconds=left)
        if events:
            cursor = events[-1][0]
        record = jobs.get(record.id)
    return record
