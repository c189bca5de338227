"""Waiting on a job's events within a bound: `Prefer: wait=N`, long-polls and event streams."""

import re
import time
from dataclasses import dataclass

from shared.job_store import JobStore
from shared.schemas import JobRecord

# Longest wait a request may ask for: beyond this, clients should use events or webhooks.
MAX_WAIT_SECONDS = 60.0
# Longest single XREAD BLOCK. The blocking client's socket timeout is this plus the Redis
# timeout, so a frozen Redis is noticed that quickly even in the middle of a long wait.
BLOCK_SLICE_SECONDS = 5.0
# The ids a Redis stream hands out ("<ms>-<seq>", or "<ms>" for its first entry at that time).
EVENT_ID_PATTERN = r"^[0-9]{1,20}(-[0-9]{1,20})?$"
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d+(?:\.\d+)?)")

Event = tuple[str, dict[str, str]]


def preferred_wait(prefer: str | None) -> float | None:
    """The seconds an RFC 7240 `Prefer: wait=N` header asks for, capped; None when absent."""
    match = _PREFER_WAIT.search(prefer or "")
    return min(float(match.group(1)), MAX_WAIT_SECONDS) if match else None


@dataclass(frozen=True)
class JobWaits:
    """Blocking reads of job events, on a client of their own whose socket timeout outlasts
    one block (redis-py's 5 s default would cut every longer wait)."""

    jobs: JobStore
    # The same keys on the blocking client (socket timeout > BLOCK_SLICE_SECONDS).
    blocking: JobStore

    def next_events(self, job_id: str, *, after: str, seconds: float) -> list[Event]:
        """Events newer than after, waiting at most min(seconds, one slice) for the first."""
        # BLOCK 0 would wait forever: a wait that is nearly over still blocks a millisecond.
        block = min(max(seconds, 0.001), BLOCK_SLICE_SECONDS)
        return self.blocking.read_events(job_id, after=after, block_seconds=block)

    def until_finished(self, record: JobRecord, seconds: float) -> JobRecord:
        """The job once it ended, or as it is when seconds have passed."""
        deadline = time.monotonic() + min(seconds, MAX_WAIT_SECONDS)
        cursor = "$"
        # Re-read after choosing "$": a job that ended before then would otherwise be waited on.
        record = self.jobs.get(record.id)
        while not record.status.terminal:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            events = self.next_events(record.id, after=cursor, seconds=left)
            if events:
                cursor = events[-1][0]
            # Read each slice: with "$" as cursor an event between two slices is not seen.
            record = self.jobs.get(record.id)
        return record
