"""Presigned direct uploads against the real S3 server and Redis: single PUT and multipart, verified
on completion (size, SHA-256, type), probed by the preprocessing code, then copied into a job."""

import hashlib
import struct
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from scripts.sample_media import sample_jpeg, sample_mp4
from services.ingest_api.config import IngestSettings, get_settings
from services.ingest_api.media_source_settings import MediaSourceSettings
from services.ingest_api.upload_routes import get_media_source_settings, router
from services.ingest_api.uploads import media_ref_from_upload
from services.preprocess_worker.config import PreprocessSettings
from services.preprocess_worker.probe import MAX_PROBE_ATTEMPTS, probe_upload
from shared.celery_factory import create_celery_app
from shared.errors import ERRORS, ErrorCode, TesseraError
from shared.http_api import ANONYMOUS, create_api
from shared.object_store import JobKeys, ObjectStore
from shared.settings import BaseServiceSettings
from shared.upload_store import UploadRecord, UploadStore

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def api(settings: BaseServiceSettings) -> Iterator[TestClient]:
    """The upload routes in a small app on the test Redis and S3 server."""
    # Without keys, callers are the anonymous tenant (auth itself is tested in test_auth.py).
    ingest = IngestSettings(REDIS_URL=settings.REDIS_URL, S3_ENDPOINT=settings.S3_ENDPOINT,
                            KEY_PREFIX=settings.KEY_PREFIX, MAX_IMAGE_BYTES=MIB,
                            AUTH_REQUIRED=False)
    sources = MediaSourceSettings(REDIS_URL=settings.REDIS_URL, S3_ENDPOINT=settings.S3_ENDPOINT,
                                  KEY_PREFIX=settings.KEY_PREFIX)
    app = create_api(ingest, title="uploads", description="upload routes under test")
    # Probe tasks go to a broker no worker reads: these tests call the probe themselves, and
    # the stack's workers (started by other tests in the session) must not race them.
    idle_broker = ingest.model_copy(update={"REDIS_URL": _other_db(settings.REDIS_URL)})
    app.state.producer = create_celery_app("uploads-test", idle_broker)
    app.include_router(router)
    app.dependency_overrides[get_settings] = lambda: ingest
    app.dependency_overrides[get_media_source_settings] = lambda: sources
    with TestClient(app) as client:
        yield client


def _other_db(url: str) -> str:
    """The same Redis server, another database number."""
    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(db + 1) % 16}"))


@pytest.fixture(scope="module")
def uploads(settings: BaseServiceSettings) -> UploadStore:
    return UploadStore(redis.Redis.from_url(settings.REDIS_URL, decode_responses=True),
                       settings.KEY_PREFIX)


def _announce(api: TestClient, data: bytes, **fields: object) -> dict[str, Any]:
    body = {"filename": "file.bin", "size_bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), **fields}
    response = api.post("/v1/uploads", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _probe(upload_id: str, uploads: UploadStore, objects: ObjectStore) -> dict[str, Any]:
    record = probe_upload(upload_id=upload_id, uploads=uploads, objects=objects,
                          settings=PreprocessSettings())
    return record.model_dump(mode="json")


def test_single_put_upload_is_verified_probed_and_copied_into_a_job(
        api: TestClient, uploads: UploadStore, objects: ObjectStore,
        settings: BaseServiceSettings) -> None:
    data = sample_jpeg(640, 480)
    created = _announce(api, data, filename="photo.jpg", content_type="image/jpeg")
    assert created["method"] == "PUT" and created["parts"] is None
    upload_id = created["upload_id"]
    assert httpx.put(created["url"], content=data, timeout=30).status_code == 200

    with pytest.raises(TesseraError) as early:
        media_ref_from_upload(upload_id=upload_id, tenant_id=ANONYMOUS.tenant_id,
                              job_id="job_early", index=0, uploads=uploads, objects=objects)
    assert early.value.code == ErrorCode.upload_not_ready

    completed = api.post(f"/v1/uploads/{upload_id}/complete", json={})
    assert completed.status_code == 200, completed.text
    assert completed.json()["status"] == "probing"
    assert completed.json()["content_type"] == "image/jpeg"
    # Completing again changes nothing (a retried request). The probe task itself is run by
    # a real worker in test_media_sources.py; here the probe is called directly.
    assert api.post(f"/v1/uploads/{upload_id}/complete", json={}).json()["status"] in (
        "probing", "ready")

    assert _probe(upload_id, uploads, objects)["status"] == "ready"
    public = api.get(f"/v1/uploads/{upload_id}").json()
    assert public["status"] == "ready"
    assert public["probe"] == {"kind": "image", "content_type": "image/jpeg", "width": 640,
                               "height": 480, "duration_seconds": None, "frame_rate": None,
                               "pages": None}

    ref = media_ref_from_upload(upload_id=upload_id, tenant_id=ANONYMOUS.tenant_id,
                                job_id="job_upl", index=1, uploads=uploads, objects=objects)
    assert ref.key == JobKeys("job_upl").media(1)
    assert (ref.kind, ref.filename, ref.size_bytes) == ("image", "photo.jpg", len(data))
    assert objects.get_bytes(ref.key) == data


def test_two_part_multipart_upload_is_joined_verified_and_probed(
        api: TestClient, uploads: UploadStore, objects: ObjectStore) -> None:
    video = sample_mp4(seconds=4, fps=10)
    # An ISO-BMFF 'free' box pads the video past S3's 5 MiB minimum for the first part.
    padding = 10 * MIB + 12345
    data = video + struct.pack(">I", padding) + b"free" + b"\0" * (padding - 8)
    created = _announce(api, data, filename="clip.mp4", parts=2)
    assert created["url"] is None and [p["part_number"] for p in created["parts"]] == [1, 2]
    offset, etags = 0, []
    for part in created["parts"]:
        chunk = data[offset:offset + part["size_bytes"]]
        offset += len(chunk)
        response = httpx.put(part["url"], content=chunk, timeout=60)
        assert response.status_code == 200, response.text
        etags.append({"part_number": part["part_number"], "etag": response.headers["etag"]})
    assert offset == len(data)

    completed = api.post(f"/v1/uploads/{created['upload_id']}/complete", json={"parts": etags})
    assert completed.status_code == 200, completed.text
    assert completed.json()["kind"] == "video"
    probed = _probe(created["upload_id"], uploads, objects)
    assert probed["status"] == "ready", probed
    probe = probed["probe"]
    assert (probe["width"], probe["height"]) == (320, 240)
    assert probe["duration_seconds"] == pytest.approx(4, abs=0.2)
    assert objects.get_bytes(probed["key"]) == data


def test_multipart_completion_without_etags_uses_the_parts_s3_holds(api: TestClient) -> None:
    data = sample_jpeg(64, 64)
    data += b"\0" * (10 * MIB + 1 - len(data))
    created = _announce(api, data, parts=2)
    offset = 0
    for part in created["parts"]:
        httpx.put(part["url"], content=data[offset:offset + part["size_bytes"]], timeout=60)
        offset += part["size_bytes"]
    # A 10 MiB image is over this app's 1 MiB image limit: verified, then refused by kind.
    completed = api.post(f"/v1/uploads/{created['upload_id']}/complete", json={})
    assert completed.json()["code"] == ErrorCode.media_too_large


def test_completion_refuses_a_wrong_sha256_and_deletes_the_bytes(
        api: TestClient, objects: ObjectStore) -> None:
    data = sample_jpeg(320, 240)
    created = _announce(api, data, sha256="0" * 64)
    httpx.put(created["url"], content=data, timeout=30)
    completed = api.post(f"/v1/uploads/{created['upload_id']}/complete", json={})
    assert completed.status_code == ERRORS[ErrorCode.upload_verification_failed].http_status
    assert completed.json()["code"] == ErrorCode.upload_verification_failed
    assert hashlib.sha256(data).hexdigest() in completed.json()["detail"]
    public = api.get(f"/v1/uploads/{created['upload_id']}").json()
    assert public["status"] == "failed"
    assert public["error"]["code"] == ErrorCode.upload_verification_failed
    assert list(objects.list_keys(f"uploads/{created['upload_id']}")) == []
    again = api.post(f"/v1/uploads/{created['upload_id']}/complete", json={})
    assert again.json()["code"] == ErrorCode.upload_verification_failed


def test_completion_refuses_a_size_mismatch_and_waits_for_missing_bytes(api: TestClient) -> None:
    data = sample_jpeg(320, 240)
    created = _announce(api, data)
    waiting = api.post(f"/v1/uploads/{created['upload_id']}/complete", json={})
    assert waiting.json()["code"] == ErrorCode.upload_not_ready
    assert api.get(f"/v1/uploads/{created['upload_id']}").json()["status"] == "pending"
    httpx.put(created["url"], content=data[:-10], timeout=30)
    short = api.post(f"/v1/uploads/{created['upload_id']}/complete", json={})
    assert short.json()["code"] == ErrorCode.upload_verification_failed
    assert "announced" in short.json()["detail"]


def test_uploads_refuse_unknown_ids_bad_parts_and_oversized_files(api: TestClient) -> None:
    missing = api.get("/v1/uploads/upl_missing")
    assert missing.status_code == ERRORS[ErrorCode.upload_not_found].http_status
    assert missing.json()["code"] == ErrorCode.upload_not_found
    small = api.post("/v1/uploads", json={"filename": "a.mp4", "size_bytes": 6 * MIB,
                                          "sha256": "a" * 64, "parts": 2})
    assert small.status_code == 422 and "5 MiB" in small.json()["detail"]
    huge = api.post("/v1/uploads", json={"filename": "a.mp4", "size_bytes": 2**40,
                                         "sha256": "a" * 64})
    assert huge.json()["code"] == ErrorCode.media_too_large


def test_probe_fails_an_upload_whose_content_cannot_be_read(
        api: TestClient, uploads: UploadStore, objects: ObjectStore) -> None:
    data = b"%PDF-1.7\n" + b"not really a pdf" * 100
    created = _announce(api, data, filename="doc.pdf")
    httpx.put(created["url"], content=data, timeout=30)
    assert api.post(f"/v1/uploads/{created['upload_id']}/complete", json={}).json()["kind"] == "pdf"
    probed = _probe(created["upload_id"], uploads, objects)
    assert probed["status"] == "failed" and probed["error"]["code"] == "decode_failed"


def test_a_put_after_completion_cannot_change_what_jobs_read(
        api: TestClient, uploads: UploadStore, objects: ObjectStore) -> None:
    original, replacement = sample_jpeg(320, 240), sample_jpeg(64, 48)
    created = _announce(api, original, filename="photo.jpg")
    assert httpx.put(created["url"], content=original, timeout=30).status_code == 200
    completed = api.post(f"/v1/uploads/{created['upload_id']}/complete", json={})
    assert completed.status_code == 200, completed.text
    # The presigned URL is still valid: other bytes land on the client's key, not the verified.
    assert httpx.put(created["url"], content=replacement, timeout=30).status_code == 200

    probed = _probe(created["upload_id"], uploads, objects)
    assert probed["status"] == "ready" and probed["probe"]["width"] == 320
    ref = media_ref_from_upload(upload_id=created["upload_id"], tenant_id=ANONYMOUS.tenant_id,
                                job_id="job_overwrite", index=0, uploads=uploads,
                                objects=objects)
    assert objects.get_bytes(ref.key) == original
    assert ref.sha256 == hashlib.sha256(original).hexdigest()


def _probing_upload(api: TestClient) -> str:
    data = sample_jpeg(32, 32)
    created = _announce(api, data, filename="tiny.jpg")
    httpx.put(created["url"], content=data, timeout=30)
    assert api.post(f"/v1/uploads/{created['upload_id']}/complete",
                    json={}).json()["status"] == "probing"
    upload_id: str = created["upload_id"]
    return upload_id


def test_probe_fails_the_upload_on_an_unexpected_error(
        api: TestClient, uploads: UploadStore, objects: ObjectStore) -> None:
    upload_id = _probing_upload(api)
    objects.client.remove_object(objects.bucket, uploads.get(upload_id).key)  # S3 loses it
    probed = _probe(upload_id, uploads, objects)
    assert probed["status"] == "failed" and probed["error"]["code"] == "internal_error"
    assert upload_id in probed["error"]["message"]


def test_probe_gives_up_after_the_worker_died_on_it_repeatedly(
        api: TestClient, uploads: UploadStore, objects: ObjectStore) -> None:
    upload_id = _probing_upload(api)

    def died_probing(current: UploadRecord) -> UploadRecord:
        current.probe_attempts = MAX_PROBE_ATTEMPTS  # started that often, never finished
        return current

    uploads.update(upload_id, died_probing)
    probed = _probe(upload_id, uploads, objects)
    assert probed["status"] == "failed" and probed["error"]["code"] == "internal_error"
