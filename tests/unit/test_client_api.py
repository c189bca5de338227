"""The client's request building and stream following, against an in-process fake transport."""

import json
from collections.abc import Iterator

import httpx
import pytest

from tessera_client.api import Tessera, form_fields
from tessera_client.errors import JobNotFinishedError, JobNotFoundError, WaitTimeoutError
from tessera_client.sse import ServerEvent

JOB = {"id": "job_1", "status": "succeeded", "terminal": True, "model": "m", "trace_id": "ab",
       "error": None}


def _sse(*events: tuple[str, str, dict[str, str]]) -> bytes:
    return b"".join(f"id: {i}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()
                    for i, kind, data in events)


class _BrokenStream(httpx.SyncByteStream):
    """A response body that delivers some bytes and then loses the connection."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self._data
        raise httpx.RemoteProtocolError("peer closed connection")


def test_wait_reconnects_with_last_event_id_after_the_stream_breaks() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            seen.append(request.headers.get("Last-Event-ID"))
            if len(seen) == 1:
                body = _sse(("1-0", "status", {"status": "queued"}),
                            ("2-0", "output", {"delta": "a "}))
                return httpx.Response(200, stream=_BrokenStream(body + b"retry: 10\n\n"))
            return httpx.Response(200, content=_sse(("3-0", "output", {"delta": "cat"}),
                                                    ("4-0", "status", {"status": "succeeded"})))
        return httpx.Response(200, json=JOB)

    events: list[ServerEvent] = []
    with Tessera("http://in", "http://out", "k", transport=httpx.MockTransport(handler)) as client:
        job = client.wait("job_1", timeout=10, on_event=events.append)
    assert seen == [None, "2-0"]
    assert [event.id for event in events] == ["1-0", "2-0", "3-0", "4-0"]
    assert job.status == "succeeded" and job.trace_id == "ab"


def test_wait_gives_up_at_its_timeout_while_the_stream_stays_silent() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b": keep-alive\n\n")

    with (Tessera("http://in", "http://out", transport=httpx.MockTransport(handler)) as client,
          pytest.raises(WaitTimeoutError)):
        client.wait("job_1", timeout=0.3)


def test_wait_raises_at_once_for_an_unknown_job() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"code": "job_not_found", "detail": "No job."})

    with (Tessera("http://in", "http://out", transport=httpx.MockTransport(handler)) as client,
          pytest.raises(JobNotFoundError)):
        client.wait("job_x", timeout=5)


def test_submit_sends_the_form_with_the_key_and_reports_upload_progress() -> None:
    received: dict[str, object] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        received["auth"] = request.headers["Authorization"]
        received["body"] = request.read()
        received["length"] = int(request.headers["Content-Length"])
        return httpx.Response(202, json={**JOB, "status": "queued", "terminal": False})

    progress: list[tuple[int, int]] = []
    with Tessera("http://in", "http://out", "k", transport=httpx.MockTransport(handler)) as client:
        job = client.submit([("a.jpg", b"\xff\xd8" + b"x" * 200_000)], "What is it?",
                            max_new_tokens=8, webhook_events=["started", "output"],
                            on_progress=lambda sent, total: progress.append((sent, total)))
    body = received["body"]
    assert isinstance(body, bytes)
    assert job.status == "queued" and received["auth"] == "Bearer k"
    assert b'name="webhook_events"\r\n\r\nstarted' in body and b"What is it?" in body
    assert progress[-1] == (received["length"], received["length"]) and len(progress) > 2


def test_result_while_running_raises_not_finished() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(202, json={**JOB, "status": "inferring", "terminal": False})

    with (Tessera("http://in", "http://out", transport=httpx.MockTransport(handler)) as client,
          pytest.raises(JobNotFinishedError, match="inferring")):
        client.result("job_1")


def test_form_fields_repeat_lists_encode_schemas_and_drop_unset_options() -> None:
    fields = form_fields("p", {"model": None, "json_schema": {"type": "object"},
                               "webhook_events": ["started"], "temperature": 0.5,
                               "exact": True})
    assert fields == {"prompt": "p", "json_schema": '{"type": "object"}',
                      "webhook_events": ["started"], "temperature": "0.5", "exact": "true"}
