"""The Tessera client: submit jobs to the ingest API, read and follow them on the results API."""

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self

import httpx

from tessera_client.errors import (
    APIError,
    JobNotFinishedError,
    RetryLaterError,
    WaitTimeoutError,
    error_from_response,
)
from tessera_client.sse import ServerEvent, SSEDecoder

DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_RESULTS_URL = "http://127.0.0.1:8001"
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "expired"})
# A path, or (file name, content) for data that is not on disk.
FileInput = str | os.PathLike[str] | tuple[str, bytes | IO[bytes]]
# Called with (bytes sent, bytes in the whole request body).
ProgressCallback = Callable[[int, int], None]
# The server sends a keep-alive comment every EVENTS_KEEPALIVE_SECONDS (15 s by default).
_STREAM_READ_TIMEOUT = 60.0
_MAX_RECONNECT_DELAY = 5.0


@dataclass(frozen=True)
class Job:
    """A job as the API shows it; `raw` holds every field, including ones newer than this client."""

    id: str
    status: str
    terminal: bool
    model: str
    trace_id: str | None
    error: dict[str, Any] | None
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Job":
        """A job from its JSON object."""
        return cls(id=data["id"], status=data["status"],
                   terminal=data.get("terminal", data["status"] in TERMINAL_STATUSES),
                   model=data.get("model", ""), trace_id=data.get("trace_id"),
                   error=data.get("error"), raw=data)


@dataclass(frozen=True)
class Result:
    """A succeeded job's answer; `raw` holds usage, inputs, timings and the rest."""

    job_id: str
    text: str
    finish_reason: str
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Result":
        """A result from its JSON object."""
        return cls(job_id=data["job_id"], text=data["text"],
                   finish_reason=data.get("finish_reason", ""), raw=data)


@dataclass(frozen=True)
class Batch:
    """A server-side batch: how many of its jobs exist, have finished, and are in each state."""

    id: str
    total: int
    finished: int
    counts: dict[str, int]
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Batch":
        """A batch from its JSON object."""
        return cls(id=data["id"], total=data["total"], finished=data["finished"],
                   counts=data.get("counts", {}), raw=data)

    @property
    def done(self) -> bool:
        """True once every job of the batch has ended."""
        return self.finished >= self.total


@dataclass(frozen=True)
class JobPage:
    """One page of a job listing; pass `next_cursor` back for the next."""

    data: list[Job]
    next_cursor: str | None


class Tessera:
    """A synchronous client of both Tessera APIs, authenticated with one API key."""

    def __init__(self, api_url: str = DEFAULT_API_URL, results_url: str = DEFAULT_RESULTS_URL,
                 api_key: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self.results_url = results_url.rstrip("/")
        self._timeout = timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def submit(self, files: Sequence[FileInput], prompt: str, *,
               on_progress: ProgressCallback | None = None, idempotency_key: str | None = None,
               **options: Any) -> Job:
        """Upload media and a prompt; options are the form fields (model, max_new_tokens, ...)."""
        with ExitStack() as stack:
            parts = [("files", _open(item, stack)) for item in files]
            headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
            request = self._http.build_request("POST", f"{self.api_url}/v1/jobs",
                                               data=form_fields(prompt, options), files=parts,
                                               headers=headers)
            if on_progress is not None:
                request.stream = _ProgressStream(request.stream,
                                                 int(request.headers.get("Content-Length", 0)),
                                                 on_progress)
            response = self._http.send(request)
        return Job.from_json(_json(response))

    def get(self, job_id: str) -> Job:
        """The job's current state."""
        return Job.from_json(_json(self._http.get(self._job_url(job_id))))

    def result(self, job_id: str) -> Result:
        """The answer of a succeeded job; JobNotFinishedError while it runs, JobFailedError after
        it failed."""
        response = self._http.get(self._job_url(job_id) + "/result")
        if response.status_code == 202:
            raise JobNotFinishedError(202, "job_not_finished",
                                      f"Job {job_id} is {response.json().get('status')}.",
                                      response.json())
        return Result.from_json(_json(response))

    def cancel(self, job_id: str) -> Job:
        """Ask for the job to stop; the job as it is now (`canceling` or already ended)."""
        url = f"{self.api_url}/v1/jobs/{job_id}/cancel"
        return Job.from_json(_json(self._http.post(url)))

    def list_jobs(self, *, status: str | None = None, model: str | None = None,
                  limit: int | None = None, cursor: str | None = None) -> JobPage:
        """One page of the caller's jobs, newest first, filtered by status and model."""
        params = {key: value for key, value in
                  {"status": status, "model": model, "limit": limit, "cursor": cursor}.items()
                  if value is not None}
        body = _json(self._http.get(f"{self.results_url}/v1/jobs", params=params))
        return JobPage([Job.from_json(item) for item in body["data"]], body.get("next_cursor"))

    def submit_batch(self, requests: bytes, files: Sequence[FileInput], *,
                     on_progress: ProgressCallback | None = None) -> Batch:
        """Submit a JSONL of requests (custom_id, prompt, files by name, job options) with the
        files its lines name; the server creates one job per line."""
        with ExitStack() as stack:
            jsonl: tuple[str, bytes, str] = ("requests.jsonl", requests, "application/x-ndjson")
            parts: list[tuple[str, tuple[str, bytes | IO[bytes]] | tuple[str, bytes, str]]] = [
                ("requests", jsonl), *(("files", _open(item, stack)) for item in files)]
            request = self._http.build_request("POST", f"{self.api_url}/v1/batches", files=parts)
            if on_progress is not None:
                request.stream = _ProgressStream(request.stream,
                                                 int(request.headers.get("Content-Length", 0)),
                                                 on_progress)
            response = self._http.send(request)
        return Batch.from_json(_json(response))

    def get_batch(self, batch_id: str) -> Batch:
        """The batch's counters."""
        return Batch.from_json(_json(self._http.get(f"{self.results_url}/v1/batches/{batch_id}")))

    def batch_results(self, batch_id: str) -> list[dict[str, Any]]:
        """One line per finished job of the batch: custom_id, job_id, status, result or error."""
        response = self._http.get(f"{self.results_url}/v1/batches/{batch_id}/results")
        if response.is_error:
            raise error_from_response(response)
        return [json.loads(line) for line in response.text.splitlines() if line.strip()]

    def wait_batch(self, batch_id: str, timeout: float = 3600.0, *, poll_seconds: float = 1.0,
                   on_update: Callable[[Batch], None] | None = None) -> Batch:
        """Poll the batch until all its jobs ended, calling on_update with each reading."""
        deadline = time.monotonic() + timeout
        while True:
            batch = self.get_batch(batch_id)
            if on_update is not None:
                on_update(batch)
            if batch.done:
                return batch
            if time.monotonic() + poll_seconds > deadline:
                raise WaitTimeoutError(f"batch {batch_id} did not end within {timeout:g}s")
            time.sleep(poll_seconds)

    def events(self, job_id: str, *, timeout: float = 600.0,
               last_event_id: str | None = None) -> Iterator[ServerEvent]:
        """Every event of the job until its terminal status, reconnecting with Last-Event-ID
        when the stream breaks; WaitTimeoutError after timeout seconds."""
        deadline = time.monotonic() + timeout
        decoder = SSEDecoder()
        decoder.last_event_id = last_event_id
        delay = 0.5
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeoutError(f"job {job_id} did not end within {timeout:g}s")
            headers = {"Last-Event-ID": decoder.last_event_id} if decoder.last_event_id else {}
            read_timeout = httpx.Timeout(self._timeout, read=min(remaining, _STREAM_READ_TIMEOUT))
            try:
                with self._http.stream("GET", self._job_url(job_id) + "/events",
                                       headers=headers, timeout=read_timeout) as response:
                    if response.is_error:
                        response.read()
                        raise error_from_response(response)
                    for line in response.iter_lines():
                        event = decoder.feed(line)
                        if event is not None:
                            delay = 0.5
                            yield event
                            if is_terminal(event):
                                return
                        if time.monotonic() > deadline:
                            raise WaitTimeoutError(
                                f"job {job_id} did not end within {timeout:g}s")
            except httpx.TransportError:
                pass
            except RetryLaterError as error:
                delay = max(delay, error.retry_after or 0.0)
            except APIError as error:
                if error.status < 500:
                    raise
            if decoder.retry_ms is not None:
                delay = max(delay, decoder.retry_ms / 1000)
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 2, _MAX_RECONNECT_DELAY)

    def wait(self, job_id: str, timeout: float = 600.0,
             on_event: Callable[[ServerEvent], None] | None = None) -> Job:
        """Follow the job's event stream until it ends, calling on_event for each event."""
        for event in self.events(job_id, timeout=timeout):
            if on_event is not None:
                on_event(event)
        return self.get(job_id)

    def _job_url(self, job_id: str) -> str:
        return f"{self.results_url}/v1/jobs/{job_id}"


def is_terminal(event: ServerEvent) -> bool:
    """True for the status event that ends a job's stream."""
    return event.event == "status" and event.json().get("status") in TERMINAL_STATUSES


def form_fields(prompt: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The multipart form fields for a prompt and options: lists repeat, dicts go as JSON."""
    fields: dict[str, Any] = {"prompt": prompt}
    for name, value in options.items():
        if value is None:
            continue
        if isinstance(value, dict):
            fields[name] = json.dumps(value)
        elif isinstance(value, bool):
            fields[name] = "true" if value else "false"
        elif isinstance(value, list | tuple):
            fields[name] = [str(item) for item in value]
        else:
            fields[name] = str(value)
    return fields


def _open(item: FileInput, stack: ExitStack) -> tuple[str, bytes | IO[bytes]]:
    if isinstance(item, tuple):
        return item
    path = Path(item)
    return path.name, stack.enter_context(path.open("rb"))


def _json(response: httpx.Response) -> dict[str, Any]:
    if response.is_error:
        raise error_from_response(response)
    body: dict[str, Any] = response.json()
    return body


class _ProgressStream(httpx.SyncByteStream):
    """The request body as httpx streams it, reporting the bytes sent so far."""

    def __init__(self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, total: int,
                 on_progress: ProgressCallback) -> None:
        assert isinstance(stream, httpx.SyncByteStream)
        self._stream = stream
        self._total = total
        self._on_progress = on_progress

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self._stream:
            yield chunk
            sent += len(chunk)
            self._on_progress(sent, self._total)
