"""How prepared inputs become engine images, and how stage timings are derived."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from services.inference_worker.answer import engine_images, seen_inputs, stage_timings
from services.inference_worker.engine import EngineOutput
from shared.schemas import ImageTiling, MediaKind, PreparedInput, PreparedJob, StageTimes
from shared.tile_plan import TilePlan


def _tiling(cols: int, rows: int) -> ImageTiling:
    tiles = cols * rows + (cols * rows > 1)
    return ImageTiling(width=1, height=1, cols=cols, rows=rows, thumbnail=cols * rows > 1,
                       num_tiles=tiles, visual_tokens=256 * tiles)


def _input(index: int, kind: MediaKind, tilings: list[ImageTiling]) -> PreparedInput:
    return PreparedInput(index=index, kind=kind, tiles_key="k", images=tilings)


def test_lone_image_has_no_label_and_all_its_tiles() -> None:
    tiles = np.zeros((5, 448, 448, 3), np.uint8)
    [image] = engine_images([_input(0, "image", [_tiling(2, 2)])], [tiles])
    assert image.label == "" and image.tiles.shape[0] == 5 and image.thumbnail


def test_several_inputs_are_numbered_in_order_and_split_per_image() -> None:
    inputs = [_input(0, "image", [_tiling(1, 1)]),
              _input(1, "pdf", [_tiling(2, 1), _tiling(1, 1)]),
              _input(2, "video", [_tiling(1, 1)] * 3)]
    tiles = [np.full((n, 448, 448, 3), i, np.uint8) for i, n in enumerate([1, 4, 3])]
    images = engine_images(inputs, tiles)
    assert [image.label for image in images] == [
        "Image-1", "Image-2", "Image-3", "Frame1", "Frame2", "Frame3"]
    assert [image.tiles.shape[0] for image in images] == [1, 3, 1, 1, 1, 1]
    assert images[2].tiles[0, 0, 0, 0] == 1  # the pdf's second page came from the pdf's array


def test_stage_timings_follow_the_timestamps() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    times = StageTimes(created_at=start, preprocess_started_at=start + timedelta(seconds=1),
                       preprocess_finished_at=start + timedelta(seconds=3),
                       inference_started_at=start + timedelta(seconds=4))
    timings = stage_timings(times, start + timedelta(seconds=10))
    assert (timings.queue_seconds, timings.preprocess_seconds, timings.inference_queue_seconds,
            timings.inference_seconds, timings.total_seconds) == (1, 2, 1, 6, 10)


def test_the_result_reports_the_grid_the_engine_fed_the_model() -> None:
    manifest = PreparedJob(job_id="j", inputs=[_input(0, "image", [_tiling(6, 4)]),
                                               _input(1, "video", [_tiling(1, 1)] * 2)])
    seen = (TilePlan(3, 2, thumbnail=True), TilePlan(1, 1, thumbnail=False),
            TilePlan(1, 1, thumbnail=False))
    output = EngineOutput(text="", prompt_tokens=1, completion_tokens=1, finish_reason="stop",
                          seen=seen)
    photo, video = seen_inputs(manifest, output, tokens_per_tile=256)
    [image] = photo.images
    assert (image.cols, image.rows, image.num_tiles, image.visual_tokens) == (3, 2, 7, 7 * 256)
    assert [frame.num_tiles for frame in video.images] == [1, 1]
    with pytest.raises(ValueError, match="2 grids for 3 images"):
        seen_inputs(manifest, EngineOutput("", 1, 1, "stop", seen[:2]), tokens_per_tile=256)
