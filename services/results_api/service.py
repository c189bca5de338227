"""Reading results and event streams for the results API."""

import json
import logging
import time
from collections.abc import Iterator

from shared.batch_store import BatchItem
from shared.errors import ErrorCode, TesseraError
from shared.job_store import JobNotFound
from shared.job_waits import JobWaits
from shared.object_store import ObjectStore
from shared.outages import OUTAGE_ERRORS
from shared.schemas import JobRecord, JobResult, JobStatus

logger = logging.getLogger(__name__)


def finished_result(*, record: JobRecord, objects: ObjectStore) -> JobResult | None:
    """The result of a succeeded job, None while it runs; an error for jobs that ended otherwise."""
    if not record.status.terminal:
        return None
    if record.status is JobStatus.succeeded and record.result_key is not None:
        return objects.get_model(record.result_key, JobResult)
    job_error = record.error.model_dump(mode="json") if record.error else None
    reason = record.error.message if record.error else f"The job ended as {record.status}."
    raise TesseraError(ErrorCode.job_failed, f"Job {record.id} has no result: {reason}",
                       job_status=record.status.value, job_error=job_error)


def event_stream(*, waits: JobWaits, job_id: str, last_event_id: str | None,
                 keepalive_seconds: float) -> Iterator[str]:
    """Server-sent events (state changes and partial output) after last_event_id, ending with
    the terminal state change; a comment line whenever keepalive_seconds passed quietly.

    An outage of Redis ends the stream cleanly (the headers are sent, so no error answer can
    follow); clients reconnect with Last-Event-ID, as after any dropped stream.
    """
    cursor = last_event_id or "0-0"
    quiet_since = time.monotonic()
    try:
        while True:
            left = quiet_since + keepalive_seconds - time.monotonic()
            events = waits.next_events(job_id, after=cursor, seconds=left)
            if not events:
                # Quiet: a client that resumed after the last event, or a purged job, ends.
                try:
                    if waits.jobs.get(job_id).status.terminal:
                        return
                except JobNotFound:
                    return
                if time.monotonic() - quiet_since >= keepalive_seconds:
                    quiet_since = time.monotonic()
                    yield ": keep-alive\n\n"
                continue
            quiet_since = time.monotonic()
            for event_id, fields in events:
                cursor = event_id
                yield f"id: {event_id}\nevent: {fields['type']}\ndata: {fields['data']}\n\n"
                if fields["type"] == "status" and JobStatus(
                        json.loads(fields["data"])["status"]).terminal:
                    return
    except OUTAGE_ERRORS as error:
        logger.warning("event stream of %s ended: %s", job_id, type(error).__name__)


def batch_result_lines(items: list[tuple[BatchItem, JobRecord | None]],
                       objects: ObjectStore) -> Iterator[str]:
    """JSONL lines for the finished jobs of a batch, read one result at a time."""
    for item, record in items:
        if record is None:
            line: dict[str, object] = {"custom_id": item.custom_id, "job_id": item.job_id,
                                       "status": "purged"}
        elif not record.status.terminal:
            continue
        else:
            result = (objects.get_model(record.result_key, JobResult).model_dump(mode="json")
                      if record.result_key else None)
            line = {"custom_id": item.custom_id, "job_id": record.id,
                    "status": record.status.value, "result": result,
                    "error": record.error.model_dump(mode="json") if record.error else None}
        yield json.dumps(line) + "\n"
