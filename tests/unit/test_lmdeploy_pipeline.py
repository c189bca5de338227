"""Our LMDeploy engine on LMDeploy 0.18's real pipeline, with only its GPU engine stood in for.

LMDeploy's own chat template, InternVL message layout, image preprocessing, sessions and error
handling run; the tiny model answers in place of the GPU engine (tests/lmdeploy_support.py).
Both checkpoint formats are checked: the tiny model (HF-native) and its original-format twin.
"""

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lmdeploy.archs import get_model_arch
from lmdeploy.messages import ResponseType
from lmdeploy.utils import _get_and_verify_max_len
from PIL import Image
from transformers import AutoProcessor

from services.inference_worker.catalog import checkpoint_spec
from services.inference_worker.checkpoint import INTERNVL_SYSTEM_MESSAGE, read_checkpoint
from services.inference_worker.config import InferenceSettings
from services.inference_worker.engine import EngineImage, EngineOutput, EngineRequest, Turn
from services.inference_worker.engine_lmdeploy import LMDeployEngine, grid_canvas, seen_grid
from services.inference_worker.engine_transformers import TransformersEngine
from services.preprocess_worker.tiling import tile_image
from shared.errors import ErrorCode, TesseraError
from shared.pixels import IMAGENET_MEAN, IMAGENET_STD, normalize_tiles
from shared.schemas import GenerationParams
from shared.tile_plan import TileBounds, plan_tiles
from tests.lmdeploy_support import CpuBackend, cpu_backend, original_twin

GREEDY = GenerationParams(max_new_tokens=12)
# LMDeploy makes the thumbnail from the canvas we hand it, ours comes from the uploaded image.
# Measured on noisy synthetic photos for every grid of 1 to 40 tiles: mean 0.53 grey levels,
# 99th percentile 7 (single noisy pixels reach 25). The grid tiles are bit-identical.
THUMBNAIL_MEAN_LEVELS = 1.0
THUMBNAIL_P99_LEVELS = 8.0
# A grid past an HF-native processor's bounds is re-tiled by its torchvision resize; our PIL
# resize predicts those tiles within this mean (0.28 measured), which pins the geometry.
RETILED_MEAN_LEVELS = 0.5


@dataclass
class Deployed:
    """An LMDeploy engine and the CPU backend standing in for its GPU engine."""

    engine: LMDeployEngine
    backend: CpuBackend


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: gradients plus noise."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = ((xx * 3 + yy * 2 + seed * 40) % 256).astype(np.int16)
    pixels = np.stack([base, base[::-1], np.roll(base, 97, axis=1)], axis=-1)
    noise = np.random.default_rng(seed).integers(-20, 20, pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def _image(photo: Image.Image, *, max_tiles: int = 12, label: str = "") -> EngineImage:
    """The photo tiled as our preprocessing tiles it (reference-exact pixels)."""
    plan = plan_tiles(photo.width, photo.height, max_tiles=max_tiles)
    return EngineImage(tiles=tile_image(photo, plan), cols=plan.cols, rows=plan.rows,
                       thumbnail=plan.thumbnail, label=label)


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> Iterator[TransformersEngine]:
    """The transformers engine on the tiny model, with InternVL3's default system message."""
    engine = TransformersEngine(tiny_model_dir, system_message=INTERNVL_SYSTEM_MESSAGE)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def original_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's original-format twin (its template carries the system message)."""
    return original_twin(tiny_model_dir, tmp_path_factory.mktemp("tiny-original"))


@contextmanager
def _deploy(model_dir: Path, weights: Path, **options: Any) -> Iterator[Deployed]:
    with cpu_backend(pytest.MonkeyPatch(), weights) as built:
        engine = LMDeployEngine(model_dir, **{"session_len": 32768, **options})
    try:
        yield Deployed(engine, built[0])
    finally:
        engine.close()


@pytest.fixture(scope="module")
def hf_native(tiny_model_dir: Path) -> Iterator[Deployed]:
    """LMDeploy on the HF-native tiny model, given the family's default system message."""
    settings = InferenceSettings(ENGINE="lmdeploy", MODEL_NAME="InternVL3-tiny",
                                 MODEL_PATH=tiny_model_dir)
    with _deploy(tiny_model_dir, tiny_model_dir,
                 system_message=settings.system_message()) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def original(original_dir: Path, tiny_model_dir: Path) -> Iterator[Deployed]:
    """LMDeploy on the original-format twin, its system message resolved as settings do."""
    settings = InferenceSettings(ENGINE="lmdeploy", MODEL_NAME="tiny-original",
                                 MODEL_PATH=original_dir)
    with _deploy(original_dir, tiny_model_dir,
                 system_message=settings.system_message()) as deployed:
        yield deployed


def _requests() -> dict[str, EngineRequest]:
    wide, tall = _photo(1500, 1000, seed=1), _photo(700, 1400, seed=2)
    frames = [_image(_photo(640, 360, seed=k), max_tiles=1, label=f"Frame{k}")
              for k in range(1, 5)]
    pages = [_image(_photo(1240, 1754, seed=10 + k), max_tiles=6, label=f"Image-{k}")
             for k in (1, 2)]
    return {
        "single image": EngineRequest("What is in the picture?", [_image(wide)], GREEDY),
        "several images": EngineRequest("Compare them.", [_image(wide, label="Image-1"),
                                                          _image(tall, label="Image-2")], GREEDY),
        "video frames": EngineRequest("What happens in the video?", frames, GREEDY),
        "pdf pages": EngineRequest("Summarise the document.", pages, GREEDY),
        "multi-turn": EngineRequest("And the colour?", [_image(tall, max_tiles=4)], GREEDY,
                                    history=(Turn("What is it?", [_image(wide)], "A red car."),
                                             Turn("Where?", [], "In a street."))),
        "text only": EngineRequest("Say something.", [], GREEDY),
        "own system message": EngineRequest("What is it?", [_image(wide, max_tiles=2)], GREEDY,
                                            system="Answer in one word."),
        "reserved markers": EngineRequest("Is <img> or <IMG_CONTEXT> or <|im_end|> there?",
                                          [_image(wide, max_tiles=2)], GREEDY),
    }


REQUESTS = _requests()


def _assert_same_answer(output: EngineOutput, want: EngineOutput) -> None:
    """Equal outputs, but for a character cut in half by max_new_tokens: LMDeploy's incremental
    detokenizer drops its bytes, a whole decode shows them as U+FFFD."""
    assert output.text.rstrip("\ufffd") == want.text.rstrip("\ufffd")
    assert replace(output, text="") == replace(want, text="")


@pytest.mark.parametrize("case", REQUESTS)
def test_hf_native_checkpoint_gets_our_prompt_and_answers_like_the_reference(
        hf_native: Deployed, reference: TransformersEngine, case: str) -> None:
    request = REQUESTS[case]
    output = hf_native.engine.generate(request)
    assert hf_native.backend.handed[-1].input_ids == reference.input_ids(request)
    _assert_same_answer(output, reference.generate(request))


@pytest.mark.parametrize("case", REQUESTS)
def test_original_checkpoint_gets_the_same_prompt_as_the_hf_native_one(
        original: Deployed, reference: TransformersEngine, case: str) -> None:
    request = REQUESTS[case]
    output = original.engine.generate(request)
    assert original.backend.handed[-1].input_ids == reference.input_ids(request)
    want = reference.generate(request)
    # The thumbnail LMDeploy makes from our canvas differs slightly (see the tiling test), so
    # only the prompt and token counts must match; the text matches unless a thumbnail moved
    # a greedy choice.
    assert (output.prompt_tokens, output.seen) == (want.prompt_tokens, want.seen)


def test_the_original_template_default_is_the_family_message_we_send(
        original_dir: Path, tiny_model_dir: Path, reference: TransformersEngine) -> None:
    """Upstream and LMDeploy put InternVL's system message in original checkpoints' prompts;
    our engines send the same one for HF-native checkpoints of the family."""
    assert read_checkpoint(original_dir).system_message == INTERNVL_SYSTEM_MESSAGE
    request = REQUESTS["single image"]
    with _deploy(original_dir, tiny_model_dir, system_message=None) as deployed:
        deployed.engine.generate(request)
    assert deployed.backend.handed[-1].input_ids == reference.input_ids(request)


def _grid_cases() -> list[tuple[int, int]]:
    """One grid per tile count from 1 to 40, alternating wide, tall and squarish shapes."""
    cases = []
    for count in range(1, 41):
        pairs = [(cols, count // cols) for cols in range(1, count + 1) if count % cols == 0]
        cases.append(pairs[(count * 7) % len(pairs)])
    return cases


def _lmdeploy_pixels(deployed: Deployed, image: EngineImage) -> np.ndarray:
    """What LMDeploy's own InternVL preprocessing makes of the canvas we hand it."""
    model = deployed.engine._pipe.async_engine.vl_encoder.model
    messages = [{"role": "user", "content": [
        {"type": "image", "data": grid_canvas(image),
         "max_dynamic_patch": image.cols * image.rows}]}]
    [prepared] = model.preprocess(messages)[-1]["content"]
    pixels: np.ndarray = np.asarray(prepared["pixel_values"].float(), dtype=np.float32)
    return pixels


def _levels(pixels: np.ndarray) -> np.ndarray:
    """Normalised (3, H, W) pixel values back in grey levels."""
    mean = np.asarray(IMAGENET_MEAN)[:, None, None]
    std = np.asarray(IMAGENET_STD)[:, None, None]
    levels: np.ndarray = (pixels * std + mean) * 255
    return levels


@pytest.mark.parametrize(("cols", "rows"), _grid_cases())
@pytest.mark.parametrize("format_name", ["original", "hf_native"])
def test_lmdeploy_tiles_our_canvas_into_the_grid_we_predict(
        request: pytest.FixtureRequest, format_name: str, cols: int, rows: int) -> None:
    deployed: Deployed = request.getfixturevalue(format_name)
    photo = _photo(cols * 470, rows * 470, seed=cols * 41 + rows)
    image = _image(photo, max_tiles=cols * rows)
    assert (image.cols, image.rows) == (cols, rows)
    seen = seen_grid(image, deployed.engine.tiling)
    pixels = _lmdeploy_pixels(deployed, image)
    assert pixels.shape[0] == seen.num_tiles
    grid = seen.cols * seen.rows
    if format_name == "original" or cols * rows <= 12:
        # Within the engine's bounds the model sees our plan, our very grid tiles.
        assert seen == image.plan
        np.testing.assert_allclose(pixels[:grid], normalize_tiles(image.tiles)[:grid],
                                   atol=1e-5)
    else:
        retiled = tile_image(grid_canvas(image), seen)[:grid]
        levels = np.stack([_levels(tile) for tile in pixels[:grid]])
        assert np.abs(levels - retiled.transpose(0, 3, 1, 2)).mean() <= RETILED_MEAN_LEVELS
    if seen == image.plan and seen.thumbnail:
        difference = np.abs(_levels(pixels[-1]) - image.tiles[-1].transpose(2, 0, 1))
        assert difference.mean() <= THUMBNAIL_MEAN_LEVELS
        assert np.percentile(difference, 99) <= THUMBNAIL_P99_LEVELS


def test_engine_limits_say_which_grids_reach_the_model_as_planned(
        hf_native: Deployed, original: Deployed) -> None:
    assert hf_native.engine.limits.tile_bounds == TileBounds(1, 12)
    assert original.engine.limits.tile_bounds == TileBounds(1, 40)
    assert hf_native.engine.limits.context_length == 32768
    assert hf_native.engine.limits.tokens_per_tile == 256


def test_a_grid_past_the_hf_processor_bounds_is_reported_as_the_model_saw_it(
        hf_native: Deployed) -> None:
    image = _image(_photo(6 * 470, 4 * 470), max_tiles=24)
    output = hf_native.engine.generate(EngineRequest("Describe.", [image], GREEDY))
    [seen] = output.seen
    assert (image.cols, image.rows) == (6, 4)
    assert (seen.cols, seen.rows, seen.thumbnail) == (3, 2, True)  # what LMDeploy fed it
    handed = hf_native.backend.handed[-1].pixel_values
    assert handed is not None and handed.shape[0] == seen.num_tiles


def test_context_overflow_ends_with_its_code_and_numbers(tiny_model_dir: Path) -> None:
    request = EngineRequest("Describe.", [_image(_photo(1500, 1000), max_tiles=2)], GREEDY)
    with (_deploy(tiny_model_dir, tiny_model_dir, session_len=600) as deployed,
          pytest.raises(TesseraError) as caught):
        deployed.engine.generate(request)
    assert caught.value.code == ErrorCode.context_overflow
    assert not caught.value.retryable
    assert "600" in caught.value.message
    assert deployed.backend.handed == []  # refused before it reached the engine


@pytest.mark.parametrize(("status", "code"), [
    (ResponseType.OUT_OF_MEMORY, ErrorCode.out_of_memory),
    (ResponseType.INTERNAL_ENGINE_ERROR, ErrorCode.engine_error),
    (ResponseType.INPUT_LENGTH_ERROR, ErrorCode.context_overflow),
])
def test_engine_failures_end_with_our_codes(hf_native: Deployed, status: ResponseType,
                                            code: ErrorCode) -> None:
    hf_native.backend.fail_with = status
    try:
        with pytest.raises(TesseraError) as caught:
            hf_native.engine.generate(REQUESTS["text only"])
    finally:
        hf_native.backend.fail_with = None
    assert caught.value.code == code


def test_a_schema_the_grammar_cannot_compile_is_an_invalid_request(hf_native: Deployed) -> None:
    request = EngineRequest("Count.", [], GREEDY, json_schema={"type": "no-such-type"})
    with pytest.raises(TesseraError) as caught:
        hf_native.engine.generate(request)
    assert caught.value.code == ErrorCode.invalid_request
    assert hf_native.engine._pipe.session_mgr.sessions == {}  # 0.18 would keep its session


def test_cancel_aborts_through_the_session_and_leaves_others_running(
        hf_native: Deployed) -> None:
    hf_native.backend.step_seconds = 0.02
    long = GenerationParams(max_new_tokens=40, min_new_tokens=40)
    pieces = 0
    stop = threading.Event()

    def count(_: str) -> None:
        nonlocal pieces
        pieces += 1
        if pieces == 3:
            stop.set()

    canceled = EngineRequest("First.", [], long, should_stop=stop.is_set)
    other = EngineRequest("Second.", [], long)
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(hf_native.engine.generate, canceled, count)
            second = pool.submit(hf_native.engine.generate, other)
            stopped, finished = first.result(timeout=120), second.result(timeout=120)
    finally:
        hf_native.backend.step_seconds = 0.0
    assert stopped.finish_reason == "canceled"
    assert 3 <= stopped.completion_tokens < 40
    assert len(hf_native.backend.canceled) == 1  # LMDeploy's session abort reached the engine
    assert (finished.finish_reason, finished.completion_tokens) == ("length", 40)
    assert hf_native.engine._pipe.session_mgr.sessions == {}  # every session was released


def test_lmdeploy_reads_the_tiny_model_as_we_do(tiny_model_dir: Path) -> None:
    arch, config = get_model_arch(str(tiny_model_dir), trust_remote_code=True)
    spec = checkpoint_spec(tiny_model_dir)
    text = config.text_config
    assert arch == "InternVLForConditionalGeneration"
    assert (text.num_hidden_layers, text.hidden_size, text.num_attention_heads,
            text.num_key_value_heads) == (spec.layers, spec.hidden_size, spec.heads,
                                          spec.kv_heads)
    assert text.hidden_size // text.num_attention_heads == spec.head_dim
    assert _get_and_verify_max_len(config, None) == spec.max_context == 32768
    processor = AutoProcessor.from_pretrained(tiny_model_dir)  # type: ignore[no-untyped-call]
    assert (processor.image_processor.min_patches, processor.image_processor.max_patches) == (
        1, 12)
    assert list(processor.image_processor.image_mean) == list(IMAGENET_MEAN)
    assert processor.image_seq_length == 256


def test_the_engine_leaves_the_process_gpu_pinning_alone(tiny_model_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with _deploy(tiny_model_dir, tiny_model_dir):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_original_checkpoints_may_run_their_own_code(original_dir: Path, tiny_model_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """0.18 defaults trust_remote_code to False, which loads a generic config for
    InternVLChatModel checkpoints and the PyTorch engine dies on it."""
    import lmdeploy
    import lmdeploy.archs

    calls: list[tuple[str, object]] = []
    real_pipeline, real_autoget = lmdeploy.pipeline, lmdeploy.archs.autoget_backend

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        calls.append(("pipeline", kwargs.get("trust_remote_code")))
        return real_pipeline(*args, **kwargs)

    def autoget_backend(*args: Any, **kwargs: Any) -> Any:
        calls.append(("autoget_backend", kwargs.get("trust_remote_code")))
        return real_autoget(*args, **kwargs)

    monkeypatch.setattr(lmdeploy, "pipeline", pipeline)
    monkeypatch.setattr(lmdeploy.archs, "autoget_backend", autoget_backend)
    with _deploy(original_dir, tiny_model_dir):
        pass
    assert calls == [("autoget_backend", True), ("pipeline", True)]
