"""Chat bodies are bounded everywhere and their base64 media is decoded while it streams in:
one request costs the ingest API a small fraction of its media in memory."""

import base64
import json

import httpx
import pytest

from scripts.localstack import LocalStack
from tests.client import auth

MIB = 1024 * 1024


def _post(stack: LocalStack, body: bytes) -> httpx.Response:
    return httpx.post(f"{stack.ingest_url}/v1/chat/jobs", content=body, timeout=120,
                      headers={**auth(stack), "Content-Type": "application/json"})


def _chat(url: str, **fields: object) -> bytes:
    content = [{"type": "text", "text": "What is it?"},
               {"type": "video_url", "video_url": {"url": url}}]
    return json.dumps({"messages": [{"role": "user", "content": content}], **fields}).encode()


def _memory_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))


def test_a_large_data_url_costs_the_api_far_less_memory_than_its_size(
        stack: LocalStack) -> None:
    pid = stack.processes["ingest-api"].pid
    payload = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * (48 * MIB)
    # Ends in a character base64 lacks: decoded to the end, refused, nothing is stored.
    body = _chat("data:video/mp4;base64," + base64.b64encode(payload).decode() + "!")
    with open(f"/proc/{pid}/clear_refs", "w") as clear:
        clear.write("5")  # reset the peak (VmHWM) to the current RSS
    before = _memory_kib(pid, "VmRSS")
    response = _post(stack, body)
    assert response.status_code == 422, response.text
    assert "not valid base64" in response.json()["detail"]
    grown_mib = (_memory_kib(pid, "VmHWM") - before) / 1024
    # Parsed whole, the body and its decoded bytes were held about five times over (~250 MiB).
    assert grown_mib < 24, f"the ingest API grew {grown_mib:.0f} MiB for a 64 MiB body"


@pytest.mark.parametrize(("metadata", "status"), [
    ({"k": "v" * 513}, 422), ({"k" * 65: "v"}, 422), ({"": "v"}, 422),
    ({f"k{i}": "v" for i in range(17)}, 422), ({"k": "v" * (9 * MIB)}, 413)])
def test_chat_metadata_is_bounded_in_keys_and_sizes(stack: LocalStack,
                                                    metadata: dict[str, str],
                                                    status: int) -> None:
    response = _post(stack, _chat("https://example.com/a.mp4", metadata=metadata))
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"] == "application/problem+json"
    # Refused for its metadata, before the URL is even looked at.
    assert ("metadata" if status == 422 else "apart from its media") in response.json()["detail"]


def test_form_metadata_is_bounded_the_same_way(stack: LocalStack) -> None:
    response = httpx.post(f"{stack.ingest_url}/v1/jobs", headers=auth(stack),
                          data={"prompt": "Hi", "metadata": json.dumps({"k": "v" * 513}),
                                "media_urls": "https://example.com/a.jpg"})
    assert response.status_code == 422 and "metadata" in response.text


def test_chat_messages_and_parts_are_bounded(stack: LocalStack) -> None:
    many = {"messages": [{"role": "system", "content": "Be brief."}] * 40
            + [{"role": "user", "content": "Hi"}]}
    refused = _post(stack, json.dumps(many).encode())
    assert refused.status_code == 422 and "body.messages: List should have at most 32" in \
        refused.json()["detail"]
    parts = {"messages": [{"role": "user",
                           "content": [{"type": "text", "text": "x"}] * 200}]}
    refused = _post(stack, json.dumps(parts).encode())
    assert refused.status_code == 422 and "should have at most 128" in refused.json()["detail"]
