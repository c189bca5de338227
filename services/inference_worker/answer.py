"""Answers one prepared job with an engine and builds its result."""

import io
import time
from collections.abc import Callable
from datetime import datetime

import numpy as np

from services.inference_worker.engine import Engine, EngineImage, EngineOutput, EngineRequest, Turn
from shared.errors import ErrorCode, JobCanceled, TesseraError
from shared.job_store import JobNotFound, JobStore, utcnow
from shared.json_output import parse_output
from shared.object_store import JobKeys, ObjectStore
from shared.schemas import (
    ImageTiling,
    InputSummary,
    JobRecord,
    JobResult,
    PreparedInput,
    PreparedJob,
    StageTimes,
    StageTimings,
    TokenUsage,
)
from shared.tile_plan import TilePlan


class PartialOutput:
    """Collects streamed text and records it as job events, at most every `interval` seconds."""

    def __init__(self, record_delta: Callable[[str], None], interval: float = 0.25) -> None:
        self.record_delta = record_delta
        self.interval = interval
        self.pending: list[str] = []
        # Pieces taken so far: about one token each (progress reports).
        self.received = 0
        self.flushed_at = time.monotonic()

    def __call__(self, delta: str) -> None:
        """Take one new piece of text."""
        self.pending.append(delta)
        self.received += 1
        if time.monotonic() - self.flushed_at >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Record what has not been recorded yet."""
        if self.pending:
            self.record_delta("".join(self.pending))
            self.pending.clear()
        self.flushed_at = time.monotonic()


def answer_job(*, record: JobRecord, manifest: PreparedJob, objects: ObjectStore,
               jobs: JobStore, engine: Engine, on_text: PartialOutput | None = None,
               should_stop: Callable[[], bool]) -> JobResult:
    """Run the model on the job's prepared inputs (and its conversation's earlier turns) and
    return the result to store; JobCanceled when should_stop (polled at each decoding step)
    said the run must stop."""
    request = EngineRequest(question=record.prompt, images=_images(manifest, objects),
                            generation=record.generation,
                            history=conversation_history(record, jobs=jobs, objects=objects),
                            json_schema=record.json_schema, should_stop=should_stop)
    output = engine.generate(request, on_text)
    if on_text is not None:
        on_text.flush()
    if output.finish_reason == "canceled":
        raise JobCanceled
    output_json, json_valid = (parse_output(output.text, record.json_schema)
                               if record.json_schema is not None else (None, None))
    finished_at = utcnow()
    inputs = seen_inputs(manifest, output, engine.limits.tokens_per_tile)
    return JobResult(
        job_id=record.id, model=record.model, text=output.text,
        finish_reason=output.finish_reason,
        usage=TokenUsage(prompt_tokens=output.prompt_tokens,
                         completion_tokens=output.completion_tokens,
                         visual_tokens=sum(image.visual_tokens for item in inputs
                                           for image in item.images)),
        inputs=inputs,
        timings=stage_timings(record.times, finished_at), engine=engine.name,
        created_at=finished_at, output_json=output_json, json_valid=json_valid,
        previous_job_id=record.previous_job_id)


def seen_inputs(manifest: PreparedJob, output: EngineOutput,
                tokens_per_tile: int) -> list[InputSummary]:
    """What the model saw of each input: the engine's grid per image (the planned one unless the
    engine re-tiled it) and the visual tokens those tiles became."""
    planned = sum(len(item.images) for item in manifest.inputs)
    if planned != len(output.seen):
        raise ValueError(f"the engine reported {len(output.seen)} grids for {planned} images")
    seen = iter(output.seen)
    return [InputSummary(index=item.index, kind=item.kind,
                         images=[_as_seen(image, next(seen), tokens_per_tile)
                                 for image in item.images])
            for item in manifest.inputs]


def _as_seen(planned: ImageTiling, grid: TilePlan, tokens_per_tile: int) -> ImageTiling:
    return planned.model_copy(update={
        "cols": grid.cols, "rows": grid.rows, "thumbnail": grid.thumbnail,
        "num_tiles": grid.num_tiles, "visual_tokens": grid.num_tiles * tokens_per_tile})


def conversation_history(record: JobRecord, *, jobs: JobStore,
                         objects: ObjectStore) -> tuple[Turn, ...]:
    """The earlier turns of a job's conversation, oldest first, rebuilt from stored jobs."""
    turns = []
    previous_id = record.previous_job_id
    while previous_id is not None:
        try:
            previous = jobs.get(previous_id)
        except JobNotFound:
            raise TesseraError(ErrorCode.invalid_request,
                               f"Job {previous_id} of this conversation no longer exists (its "
                               "retention ended); start a new conversation.") from None
        if previous.result_key is None:
            raise TesseraError(ErrorCode.invalid_request,
                               f"Job {previous_id} of this conversation has no result any more.")
        manifest = objects.get_model(JobKeys(previous_id).prepared_manifest(), PreparedJob)
        answer = objects.get_model(previous.result_key, JobResult).text
        turns.append(Turn(previous.prompt, _images(manifest, objects), answer))
        previous_id = previous.previous_job_id
    return tuple(reversed(turns))


def _images(manifest: PreparedJob, objects: ObjectStore) -> list[EngineImage]:
    return engine_images(manifest.inputs, [_load_tiles(objects, item.tiles_key)
                                           for item in manifest.inputs])


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
