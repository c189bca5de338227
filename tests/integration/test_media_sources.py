"""Media by presigned direct upload, by URL and in chat-message shape, and SSRF rules,
through the running stack."""

import base64
import hashlib
import io
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from scripts.localstack import LocalStack, free_port
from scripts.sample_media import sample_jpeg
from shared.auth import ApiKeyStore, Scope
from shared.settings import BaseServiceSettings
from tests.client import auth, result, submit, wait_terminal


@pytest.fixture(scope="module")
def media_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local HTTP server of generated media files."""
    root = tmp_path_factory.mktemp("media")
    (root / "photo.jpg").write_bytes(sample_jpeg(320, 240))
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *_: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _wait_until_probed(stack: LocalStack, upload_id: str) -> dict[str, Any]:
    """The upload once a preprocessing worker has probed it (it must not fail)."""
    deadline = time.monotonic() + 60
    upload: dict[str, Any]
    while (upload := httpx.get(f"{stack.ingest_url}/v1/uploads/{upload_id}",
                               headers=auth(stack)).json())["status"] != "ready":
        assert upload["status"] == "probing" and time.monotonic() < deadline, upload
        time.sleep(0.1)
    return upload


def test_a_job_can_take_its_image_from_a_url(stack: LocalStack, media_server: str) -> None:
    response = submit(stack, [], media_urls=f"{media_server}/photo.jpg")
    assert response.status_code == 202, response.text
    job = wait_terminal(stack, response.json()["id"])
    assert job["status"] == "succeeded", job
    [summary] = result(stack, job["id"]).json()["inputs"]
    assert summary["images"][0]["width"] == 320


def test_private_addresses_are_refused_for_media_and_webhooks(stack: LocalStack) -> None:
    cases: list[tuple[str, str]] = [("media_urls", "http://10.0.0.7/photo.jpg"),
                                    ("media_urls", "https://169.254.169.254/latest/meta-data"),
                                    ("webhook_url", "http://10.1.2.3/hook")]
    for field, url in cases:
        response = (submit(stack, [("p.jpg", sample_jpeg(64, 64))], webhook_url=url)
                    if field == "webhook_url" else submit(stack, [], media_urls=url))
        assert response.status_code == 422, (url, response.text)
        assert response.json()["code"] == "url_not_allowed"


def test_a_presigned_upload_becomes_the_input_of_a_job(
        stack: LocalStack, settings: BaseServiceSettings) -> None:
    data = sample_jpeg(500, 400)
    created = httpx.post(f"{stack.ingest_url}/v1/uploads", headers=auth(stack), json={
        "filename": "big.jpg", "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest()})
    assert created.status_code == 201, created.text
    upload_id = created.json()["upload_id"]
    assert httpx.put(created.json()["url"], content=data).status_code == 200
    completed = httpx.post(f"{stack.ingest_url}/v1/uploads/{upload_id}/complete",
                           headers=auth(stack), json={})
    assert completed.status_code == 200, completed.text
    upload = _wait_until_probed(stack, upload_id)
    assert (upload["probe"]["width"], upload["probe"]["height"]) == (500, 400)

    job = wait_terminal(stack, submit(stack, [], upload_ids=upload_id).json()["id"])
    assert job["status"] == "succeeded", job

    stranger = ApiKeyStore(redis.Redis.from_url(settings.REDIS_URL, decode_responses=True),
                           settings.KEY_PREFIX)
    token, _ = stranger.create(tenant_id="someone-else", scopes=[Scope.submit, Scope.read])
    refused = httpx.post(f"{stack.ingest_url}/v1/jobs", headers={"X-API-Key": token},
                         data={"prompt": "Mine now?", "upload_ids": upload_id})
    assert refused.status_code == 404
    assert refused.json()["code"] == "upload_not_found"


def _data_url(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def test_a_chat_shaped_job_keeps_its_parts_in_order(stack: LocalStack, media_server: str) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": [
                {"type": "text", "text": "Compare these two pictures."},
                {"type": "image_url", "image_url": {"url": f"{media_server}/photo.jpg"}},
                {"type": "image_url", "image_url": {"url": _data_url(sample_jpeg(600, 200))}},
            ]},
        ],
        "max_tokens": 6,
        "response_format": {"type": "json_object"},
        # The tiny model reads 4096 tokens: two images at 12 tiles would not fit.
        "media_options": {"max_tiles": 4},
    }
    response = httpx.post(f"{stack.ingest_url}/v1/chat/jobs", headers=auth(stack), json=body,
                          timeout=30)
    assert response.status_code == 202, response.text
    job = wait_terminal(stack, response.json()["id"])
    assert job["status"] == "succeeded", job
    answer = result(stack, job["id"]).json()
    assert [item["images"][0]["width"] for item in answer["inputs"]] == [320, 600]
    assert answer["json_valid"] is False  # no guided decoding on the CPU engine; it says so


def test_a_chat_job_with_earlier_turns_points_to_previous_job_id(stack: LocalStack) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello"},
                         {"role": "user", "content": "And now?"}]}
    response = httpx.post(f"{stack.ingest_url}/v1/chat/jobs", headers=auth(stack), json=body)
    assert response.status_code == 422
    assert "previous_job_id" in response.json()["detail"]


def test_a_multipart_upload_is_verified_probed_and_used_by_a_job(stack: LocalStack) -> None:
    # A scanned-style PDF of noise: over two 5 MiB parts, cheap to make.
    page = Image.fromarray(np.random.default_rng(0).integers(0, 256, (3400, 3400, 3),
                                                             dtype=np.uint8))
    buffer = io.BytesIO()
    page.save(buffer, format="PDF", quality=95)
    data = buffer.getvalue()
    assert len(data) > 10 * 1024 * 1024
    response = httpx.post(f"{stack.ingest_url}/v1/uploads", headers=auth(stack), json={
        "filename": "scan.pdf", "size_bytes": len(data), "parts": 2,
        "sha256": hashlib.sha256(data).hexdigest()})
    assert response.status_code == 201, response.text
    created = response.json()
    etags = []
    for part in created["parts"]:
        start = (part["part_number"] - 1) * created["part_size_bytes"]
        put = httpx.put(part["url"], content=data[start:start + part["size_bytes"]], timeout=60)
        assert put.status_code == 200
        etags.append({"part_number": part["part_number"], "etag": put.headers["etag"]})
    completed = httpx.post(f"{stack.ingest_url}/v1/uploads/{created['upload_id']}/complete",
                           headers=auth(stack), json={"parts": etags}, timeout=60)
    assert completed.status_code == 200, completed.text
    upload = _wait_until_probed(stack, created["upload_id"])
    assert upload["probe"]["pages"] == 1
    job = wait_terminal(stack, submit(stack, [], upload_ids=created["upload_id"],
                                      max_tiles=2).json()["id"])
    assert job["status"] == "succeeded", job
