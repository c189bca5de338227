"""Turns a job's stored media into model-ready tiles and the manifest the inference side reads."""

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydantic import TypeAdapter, ValidationError

from services.preprocess_worker.config import PreprocessSettings
from services.preprocess_worker.frames import sample_frames
from services.preprocess_worker.pages import render_pages
from services.preprocess_worker.tiling import tile_image, tile_image_bytes
from shared.errors import JobCanceled
from shared.object_store import JobKeys, ObjectStore
from shared.schemas import (
    ImageTiling,
    MediaKind,
    MediaOptions,
    MediaRef,
    PreparedInput,
    PreparedJob,
)
from shared.tile_plan import TOKENS_PER_TILE, TilePlan, plan_tiles

# Part of every cache key: bump it when a change alters the tiles made from the same input and
# options (resampling, decoding, frame choice), so no job is answered from stale tiles.
PREPROCESS_VERSION = 1
_TILINGS = TypeAdapter(list[ImageTiling])


@dataclass(frozen=True)
class CacheEntry:
    """Where the prepared form of one input (content and options) is kept, shared by all jobs."""

    tiles_key: str  # uint8 .npy array, copied to and from each job's own tiles key
    tilings_key: str  # JSON list of ImageTiling; written last, so it marks a complete entry


def cache_entry(*, sha256: str, kind: MediaKind, options: MediaOptions, exact: bool) -> CacheEntry:
    """The cache keys of an input's content hash plus only the options that change its tiles."""
    params: dict[str, object] = {"version": PREPROCESS_VERSION, "kind": kind}
    if kind == "video":
        params |= {"num_frames": options.num_frames, "start": options.start_seconds,
                   "end": options.end_seconds}
    else:
        params |= {"min_tiles": options.min_tiles, "max_tiles": options.max_tiles,
                   "exact": exact}
    if kind == "pdf":
        params |= {"first_page": options.first_page, "last_page": options.last_page,
                   "dpi": options.dpi}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    stem = f"cache/prepared/{sha256}-{digest}"
    return CacheEntry(tiles_key=f"{stem}.npy", tilings_key=f"{stem}.json")


def prepare_job(*, job_id: str, media: list[MediaRef], options: MediaOptions,
                objects: ObjectStore, settings: PreprocessSettings,
                canceled: Callable[[], bool] = lambda: False,
                prepared: Callable[[int], None] = lambda done: None) -> PreparedJob:
    """Prepare every input of a job, store tiles and manifest, and return the manifest;
    `canceled` is asked before each input and `prepared` told after each.

    With PREPARED_CACHE, tiles are also kept by content hash and options (the hash is the
    ingest API's own, never a client's): a repeated input is neither downloaded nor decoded
    again, its tiles are copied inside S3 to the job's own key.
    """
    keys = JobKeys(job_id)
    inputs = []
    for ref in media:
        if canceled():  # a safe point: between inputs
            raise JobCanceled
        tiles_key = keys.prepared_tiles(ref.index)
        entry = cache_entry(sha256=ref.sha256, kind=ref.kind, options=options,
                            exact=settings.EXACT_IMAGE_RESIZE) if settings.PREPARED_CACHE else None
        images = None if entry is None else _cached_tilings(objects, entry)
        if images is not None and entry is not None:
            objects.copy(entry.tiles_key, tiles_key)
        else:
            tiles, images = _prepare_input(objects.get_bytes(ref.key), ref, options, settings)
            objects.put_bytes(tiles_key, _npy_bytes(tiles), "application/x-npy")
            if entry is not None:
                objects.copy(tiles_key, entry.tiles_key)
                objects.put_bytes(entry.tilings_key, _TILINGS.dump_json(images),
                                  "application/json")
        inputs.append(PreparedInput(index=ref.index, kind=ref.kind, tiles_key=tiles_key,
                                    images=images))
        prepared(len(inputs))
    manifest = PreparedJob(job_id=job_id, inputs=inputs)
    objects.put_model(keys.prepared_manifest(), manifest)
    return manifest


def _cached_tilings(objects: ObjectStore, entry: CacheEntry) -> list[ImageTiling] | None:
    """The tilings of a complete cache entry, or None on a miss (or an unreadable entry)."""
    try:
        return _TILINGS.validate_json(objects.get_bytes(entry.tilings_key))
    except (KeyError, ValidationError):
        return None


def _prepare_input(data: bytes, ref: MediaRef, options: MediaOptions,
                   settings: PreprocessSettings) -> tuple[np.ndarray, list[ImageTiling]]:
    exact = settings.EXACT_IMAGE_RESIZE
    if ref.kind == "video":
        sampled = sample_frames(data, num_frames=options.num_frames, start=options.start_seconds,
                                end=options.end_seconds,
                                max_decode_seconds=settings.MAX_VIDEO_DECODE_SECONDS)
        single = TilePlan(cols=1, rows=1, thumbnail=False)
        return sampled.frames, [_tiling(sampled.width, sampled.height, single, timestamp_seconds=t)
                                for t in sampled.timestamps]
    if ref.kind == "pdf":
        pages = render_pages(data, first_page=options.first_page, last_page=options.last_page,
                             dpi=options.dpi, max_pages=settings.MAX_PDF_PAGES)
        tiled = [_tile(image, options, exact=exact, page=number) for number, image in pages]
        return np.concatenate([tiles for tiles, _ in tiled]), [tiling for _, tiling in tiled]
    image = tile_image_bytes(data, min_tiles=options.min_tiles, max_tiles=options.max_tiles,
                             exact=exact, max_pixels=settings.MAX_IMAGE_PIXELS,
                             max_aspect=settings.MAX_ASPECT_RATIO)
    return image.tiles, [_tiling(image.width, image.height, image.plan)]


def _tile(image: Image.Image, options: MediaOptions, *, exact: bool,
          page: int | None = None) -> tuple[np.ndarray, ImageTiling]:
    plan = plan_tiles(image.width, image.height, min_tiles=options.min_tiles,
                      max_tiles=options.max_tiles)
    return tile_image(image, plan, exact=exact), _tiling(image.width, image.height, plan,
                                                         page=page)


def _tiling(width: int, height: int, plan: TilePlan, *, timestamp_seconds: float | None = None,
            page: int | None = None) -> ImageTiling:
    return ImageTiling(width=width, height=height, cols=plan.cols, rows=plan.rows,
                       thumbnail=plan.thumbnail, num_tiles=plan.num_tiles,
                       visual_tokens=plan.num_tiles * TOKENS_PER_TILE,
                       timestamp_seconds=timestamp_seconds, page=page)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
