"""Turns a job's stored media into model-ready tiles and the manifest the inference side reads."""

import io

import numpy as np
from PIL import Image

from services.preprocess_worker.config import PreprocessSettings
from services.preprocess_worker.decode import decode_image
from services.preprocess_worker.frames import sample_frames
from services.preprocess_worker.pages import render_pages
from services.preprocess_worker.tiling import TOKENS_PER_TILE, TilePlan, plan_tiles, tile_image
from shared.object_store import JobKeys, ObjectStore
from shared.schemas import ImageTiling, MediaOptions, MediaRef, PreparedInput, PreparedJob


def prepare_job(*, job_id: str, media: list[MediaRef], options: MediaOptions,
                objects: ObjectStore, settings: PreprocessSettings) -> PreparedJob:
    """Prepare every input of a job, store tiles and manifest, and return the manifest."""
    keys = JobKeys(job_id)
    inputs = []
    for ref in media:
        tiles, images = _prepare_input(objects.get_bytes(ref.key), ref, options, settings)
        tiles_key = keys.prepared_tiles(ref.index)
        objects.put_bytes(tiles_key, _npy_bytes(tiles), "application/x-npy")
        inputs.append(PreparedInput(index=ref.index, kind=ref.kind, tiles_key=tiles_key,
                                    images=images))
    manifest = PreparedJob(job_id=job_id, inputs=inputs)
    objects.put_model(keys.prepared_manifest(), manifest)
    return manifest


def _prepare_input(data: bytes, ref: MediaRef, options: MediaOptions,
                   settings: PreprocessSettings) -> tuple[np.ndarray, list[ImageTiling]]:
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
        tiled = [_tile(image, options, page=number) for number, image in pages]
        return np.concatenate([tiles for tiles, _ in tiled]), [tiling for _, tiling in tiled]
    image = decode_image(data, max_pixels=settings.MAX_IMAGE_PIXELS,
                         max_aspect=settings.MAX_ASPECT_RATIO)
    tiles, tiling = _tile(image, options)
    return tiles, [tiling]


def _tile(image: Image.Image, options: MediaOptions,
          page: int | None = None) -> tuple[np.ndarray, ImageTiling]:
    plan = plan_tiles(image.width, image.height, min_tiles=options.min_tiles,
                      max_tiles=options.max_tiles)
    return tile_image(image, plan), _tiling(image.width, image.height, plan, page=page)


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
