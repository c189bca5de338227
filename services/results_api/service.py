"""Reading results and event streams for the results API."""

import json
from collections.abc import Iterator

from shared.batch_store import BatchItem
from shared.errors import ErrorCode, TesseraError
from shared.job_store import JobNotFound, JobStore
from shared.object_store import ObjectStore
from shared.schemas import JobRecord, JobResult, JobStatus


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


def event_stream(*, jobs: JobStore, job_id: str, last_event_id: str | None,
                 poll_seconds: float) -> Iterator[str]:
    """Server-sent events (state changes and partial output) after last_event_id, ending with
    the terminal state change."""
    cursor = last_event_id or "0-0"
    while True:
        events = jobs.read_events(job_id, after=cursor, block_seconds=poll_seconds)
        if not events:
            # Quiet: a client that resumed after the last event, or a purged job, ends here.
            try:
                if jobs.get(job_id).status.terminal:
                    return
            except JobNotFound:
                return
            yield ": keep-alive\n\n"
            continue
        for event_id, fields in events:
            cursor = event_id
            yield f"id: {event_id}\nevent: {fields['type']}\ndata: {fields['data']}\n\n"
            if fields["type"] == "status" and JobStatus(
                    json.loads(fields["data"])["status"]).terminal:
                return


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
