"""Prepared inputs are cached by content hash and options in the real S3 server."""

import hashlib

import pytest

import services.preprocess_worker.prepare as prepare
from scripts.sample_media import sample_jpeg
from services.preprocess_worker.config import PreprocessSettings
from services.preprocess_worker.tiling import TiledImage, tile_image_bytes
from shared.object_store import JobKeys, ObjectStore
from shared.schemas import MediaOptions, MediaRef
from shared.settings import BaseServiceSettings


def upload(objects: ObjectStore, job_id: str, data: bytes) -> MediaRef:
    key = JobKeys(job_id).media(0)
    objects.put_bytes(key, data, "image/jpeg")
    return MediaRef(index=0, kind="image", key=key, filename="a.jpg", content_type="image/jpeg",
                    size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every image prepare_job decodes, in order."""
    seen: list[bytes] = []
    real = tile_image_bytes

    def counting(data: bytes, **kwargs: object) -> TiledImage:
        seen.append(data)
        return real(data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(prepare, "tile_image_bytes", counting)
    return seen


def test_repeated_image_is_prepared_once_and_shared_by_key(
        settings: BaseServiceSettings, objects: ObjectStore, decodes: list[bytes]) -> None:
    config = PreprocessSettings(**settings.model_dump())
    data = sample_jpeg(1000, 700) + b"cache-test-1"  # bytes after EOI: a hash of its own
    options = MediaOptions(max_tiles=6)
    first = prepare.prepare_job(job_id="job_cache_a", media=[upload(objects, "job_cache_a", data)],
                                options=options, objects=objects, settings=config)
    second = prepare.prepare_job(job_id="job_cache_b",
                                 media=[upload(objects, "job_cache_b", data)],
                                 options=options, objects=objects, settings=config)
    assert len(decodes) == 1
    # Each job keeps its tiles under its own keys; the second got a copy of the first's.
    assert second.inputs[0].tiles_key == JobKeys("job_cache_b").prepared_tiles(0)
    assert (objects.get_bytes(second.inputs[0].tiles_key)
            == objects.get_bytes(first.inputs[0].tiles_key))
    assert first.inputs[0].images == second.inputs[0].images
    assert objects.get_model(JobKeys("job_cache_b").prepared_manifest(), type(second)) == second

    other = prepare.prepare_job(job_id="job_cache_c", media=[upload(objects, "job_cache_c", data)],
                                options=MediaOptions(max_tiles=2), objects=objects,
                                settings=config)
    assert len(decodes) == 2
    assert other.inputs[0].images[0].num_tiles == 1  # max_tiles=2: 1x1, not 3x2 + thumbnail


def test_cache_can_be_turned_off(
        settings: BaseServiceSettings, objects: ObjectStore, decodes: list[bytes]) -> None:
    config = PreprocessSettings(**settings.model_dump(), PREPARED_CACHE=False)
    data = sample_jpeg(600, 400) + b"cache-test-2"
    for job_id in ("job_nocache_a", "job_nocache_b"):
        prepare.prepare_job(job_id=job_id, media=[upload(objects, job_id, data)],
                            options=MediaOptions(), objects=objects, settings=config)
    assert len(decodes) == 2
