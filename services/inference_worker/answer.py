"""Answers one prepared job with an engine and builds its result."""

import io
from datetime import datetime

import numpy as np

from services.inference_worker.engine import Engine, EngineImage, EngineRequest
from shared.job_store import utcnow
from shared.object_store import ObjectStore
from shared.schemas import (
    InputSummary,
    JobRecord,
    JobResult,
    PreparedInput,
    PreparedJob,
    StageTimes,
    StageTimings,
    TokenUsage,
)


def answer_job(*, record: JobRecord, manifest: PreparedJob, objects: ObjectStore,
               engine: Engine) -> JobResult:
    """Run the model on the job's prepared inputs and return the result to store."""
    images = engine_images(manifest.inputs, [_load_tiles(objects, item.tiles_key)
                                             for item in manifest.inputs])
    output = engine.generate(EngineRequest(question=record.prompt, images=images,
                                           generation=record.generation))
    finished_at = utcnow()
    return JobResult(
        job_id=record.id, model=record.model, text=output.text,
        finish_reason=output.finish_reason,
        usage=TokenUsage(prompt_tokens=output.prompt_tokens,
                         completion_tokens=output.completion_tokens,
                         visual_tokens=sum(image.visual_tokens for item in manifest.inputs
                                           for image in item.images)),
        inputs=[InputSummary(index=item.index, kind=item.kind, images=item.images)
                for item in manifest.inputs],
        timings=stage_timings(record.times, finished_at), engine=engine.name,
        created_at=finished_at)


def engine_images(inputs: list[PreparedInput], tiles: list[np.ndarray]) -> list[EngineImage]:
    """Split each input's tiles per image and label them as InternVL's prompts expect.

    A lone image has no label; otherwise photos and pages are "Image-k" and video frames
    "Frame{k}", each numbered in the order the inputs were sent.
    """
    total = sum(len(item.images) for item in inputs)
    counters = {"image": 0, "frame": 0}
    result = []
    for item, array in zip(inputs, tiles, strict=True):
        offset = 0
        for tiling in item.images:
            kind = "frame" if item.kind == "video" else "image"
            counters[kind] += 1
            label = "" if total == 1 and kind == "image" else (
                f"Frame{counters[kind]}" if kind == "frame" else f"Image-{counters[kind]}")
            result.append(EngineImage(tiles=array[offset:offset + tiling.num_tiles],
                                      cols=tiling.cols, rows=tiling.rows,
                                      thumbnail=tiling.thumbnail, label=label))
            offset += tiling.num_tiles
    return result


def stage_timings(times: StageTimes, finished_at: datetime) -> StageTimings:
    """Seconds per stage from the job's timestamps (0 for a stage with a missing stamp)."""
    return StageTimings(
        queue_seconds=_seconds(times.created_at, times.preprocess_started_at),
        preprocess_seconds=_seconds(times.preprocess_started_at, times.preprocess_finished_at),
        inference_queue_seconds=_seconds(times.preprocess_finished_at,
                                         times.inference_started_at),
        inference_seconds=_seconds(times.inference_started_at, finished_at),
        total_seconds=_seconds(times.created_at, finished_at),
    )


def _seconds(start: datetime | None, end: datetime | None) -> float:
    return (end - start).total_seconds() if start and end else 0.0


def _load_tiles(objects: ObjectStore, key: str) -> np.ndarray:
    tiles: np.ndarray = np.load(io.BytesIO(objects.get_bytes(key)), allow_pickle=False)
    return tiles
