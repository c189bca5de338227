"""How requests map onto LMDeploy: generation settings, canvases, messages, backends, errors."""

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.inference_worker.engine import EngineImage, EngineRequest, user_prompt
from services.inference_worker.engine_lmdeploy import (
    backend_config_kwargs,
    build_messages,
    choose_backend,
    classify_error,
    generation_config_kwargs,
    grid_canvas,
    model_tokens_per_tile,
    to_output,
    visual_tokens,
)
from shared.errors import ErrorCode, TesseraError
from shared.schemas import GenerationParams

GREEDY = GenerationParams(max_new_tokens=32)
SAMPLED = GenerationParams(max_new_tokens=32, min_new_tokens=4, temperature=0.7, top_p=0.9,
                           repetition_penalty=1.1, seed=42)
ENGINE_ARGS: dict[str, Any] = {
    "tp": 2, "devices": [0, 1], "session_len": 8192, "cache_max_entry_count": 0.5,
    "quant_policy": 8, "model_format": "awq", "max_batch_size": 64,
}


@dataclass
class FakeResponse:
    text: str
    input_token_len: int
    generate_token_len: int
    finish_reason: str | None


def _numbered_image(cols: int, rows: int, *, label: str = "") -> EngineImage:
    """Tile k is filled with the value k, so positions in a canvas are easy to check."""
    thumbnail = cols * rows > 1
    count = cols * rows + int(thumbnail)
    tiles = np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None, None],
                            (count, 448, 448, 3)).copy()
    return EngineImage(tiles=tiles, cols=cols, rows=rows, thumbnail=thumbnail, label=label)


def test_greedy_turns_sampling_off() -> None:
    kwargs = generation_config_kwargs(GREEDY)
    assert kwargs["do_sample"] is False
    assert kwargs["max_new_tokens"] == 32
    assert "temperature" not in kwargs and "top_p" not in kwargs


def test_sampling_passes_temperature_top_p_penalty_seed_and_disables_top_k() -> None:
    kwargs = generation_config_kwargs(SAMPLED)
    assert kwargs == {"max_new_tokens": 32, "min_new_tokens": 4, "random_seed": 42,
                      "skip_special_tokens": True, "do_sample": True, "temperature": 0.7,
                      "top_p": 0.9, "top_k": 0, "repetition_penalty": 1.1}


def test_greedy_with_repetition_penalty_samples_only_the_top_token() -> None:
    kwargs = generation_config_kwargs(GenerationParams(repetition_penalty=1.2))
    assert (kwargs["do_sample"], kwargs["top_k"], kwargs["repetition_penalty"]) == (True, 1, 1.2)


def test_generation_kwargs_build_an_lmdeploy_generation_config() -> None:
    lmdeploy = pytest.importorskip("lmdeploy")
    config = lmdeploy.GenerationConfig(**generation_config_kwargs(SAMPLED))
    assert (config.random_seed, config.min_new_tokens, config.top_k) == (42, 4, 0)


def test_grid_canvas_places_tiles_row_major_and_drops_the_thumbnail() -> None:
    image = _numbered_image(3, 2)  # tiles 0..5 in the grid, 6 is the thumbnail
    canvas = np.asarray(grid_canvas(image))
    assert canvas.shape == (2 * 448, 3 * 448, 3)
    for row in range(2):
        for col in range(3):
            block = canvas[row * 448:(row + 1) * 448, col * 448:(col + 1) * 448]
            assert (block == row * 3 + col).all()


def test_grid_canvas_of_a_single_tile_is_that_tile() -> None:
    image = _numbered_image(1, 1)
    assert np.array_equal(np.asarray(grid_canvas(image)), image.tiles[0])


def test_messages_pin_each_image_to_its_grid_size() -> None:
    request = EngineRequest("Compare.", [_numbered_image(3, 2, label="Image-1"),
                                         _numbered_image(1, 1, label="Image-2")], GREEDY)
    [message] = build_messages(request)
    assert message["role"] == "user"
    kinds = [part["type"] for part in message["content"]]
    assert kinds == ["text", "image_data", "text", "image_data", "text"]
    images = [part["image_data"] for part in message["content"] if part["type"] == "image_data"]
    assert [image["max_dynamic_patch"] for image in images] == [6, 1]
    assert [image["data"].size for image in images] == [(3 * 448, 2 * 448), (448, 448)]


def test_frames_go_as_single_tile_images_with_max_dynamic_patch_1() -> None:
    frames = [_numbered_image(1, 1, label=f"Frame{k}") for k in (1, 2, 3)]
    [message] = build_messages(EngineRequest("What happens?", frames, GREEDY))
    patches = [part["image_data"]["max_dynamic_patch"] for part in message["content"]
               if part["type"] == "image_data"]
    assert patches == [1, 1, 1]


@pytest.mark.parametrize("labels", [[""], ["Image-1", "Image-2"], ["Frame1", "Frame2", "Frame3"]])
def test_messages_render_like_user_prompt_in_lmdeploy(labels: list[str]) -> None:
    """LMDeploy's InternVL writes an image part as `<img>…</img>\\n` and joins parts with ''."""
    request = EngineRequest("Q?", [_numbered_image(1, 1, label=label) for label in labels],
                            GREEDY)
    [message] = build_messages(request)
    rendered = "".join(part["text"] if part["type"] == "text" else "<image>\n"
                       for part in message["content"])
    assert rendered == user_prompt(request)


def test_visual_tokens_count_tiles_and_image_delimiters() -> None:
    request = EngineRequest("Q", [_numbered_image(2, 2), _numbered_image(1, 1)], GREEDY)
    assert visual_tokens(request, 256) == 5 * 256 + 2 + 256 + 2


def test_tokens_per_tile_reads_hf_native_and_original_configs(tmp_path: Path,
                                                              tiny_model_dir: Path) -> None:
    assert model_tokens_per_tile(tiny_model_dir) == 256
    original = {"force_image_size": 448, "downsample_ratio": 0.5,
                "vision_config": {"image_size": 448, "patch_size": 14}}
    (tmp_path / "config.json").write_text(json.dumps(original))
    assert model_tokens_per_tile(tmp_path) == 256


@pytest.mark.parametrize(("requested", "supported", "chosen"), [
    ("auto", True, "turbomind"), ("auto", False, "pytorch"),
    ("turbomind", True, "turbomind"), ("pytorch", True, "pytorch"), ("pytorch", False, "pytorch"),
])
def test_choose_backend_prefers_turbomind_when_it_supports_the_model(
        requested: str, supported: bool, chosen: str) -> None:
    assert choose_backend(requested, supported) == chosen  # type: ignore[arg-type]


def test_choose_backend_refuses_turbomind_for_an_unsupported_model() -> None:
    with pytest.raises(ValueError, match="TurboMind does not support"):
        choose_backend("turbomind", False)


def test_turbomind_config_takes_devices_and_model_format() -> None:
    kwargs = backend_config_kwargs("turbomind", **ENGINE_ARGS)
    assert kwargs == ENGINE_ARGS


def test_pytorch_config_leaves_devices_to_cuda_visible_devices() -> None:
    kwargs = backend_config_kwargs("pytorch", **ENGINE_ARGS)
    assert "devices" not in kwargs
    assert "model_format" not in kwargs  # AWQ is read from the checkpoint by this engine
    assert kwargs["tp"] == 2 and kwargs["quant_policy"] == 8


def test_devices_must_match_tensor_parallel_degree() -> None:
    with pytest.raises(ValueError, match="exactly tp=2"):
        backend_config_kwargs("turbomind", **{**ENGINE_ARGS, "devices": [0]})


def test_backend_kwargs_build_lmdeploy_engine_configs() -> None:
    lmdeploy = pytest.importorskip("lmdeploy")
    turbomind = lmdeploy.TurbomindEngineConfig(**backend_config_kwargs("turbomind", **ENGINE_ARGS))
    pytorch = lmdeploy.PytorchEngineConfig(**backend_config_kwargs("pytorch", **ENGINE_ARGS))
    assert turbomind.devices == [0, 1] and pytorch.tp == 2


@pytest.mark.parametrize(("message", "code"), [
    ("internal error happened, status code ResponseType.INPUT_LENGTH_ERROR",
     ErrorCode.context_overflow),
    ("prompt exceeds session_len 8192", ErrorCode.context_overflow),
    ("CUDA out of memory. Tried to allocate 2.00 GiB", ErrorCode.out_of_memory),
    ("internal error happened, status code ResponseType.INTERNAL_ENGINE_ERROR",
     ErrorCode.engine_error),
])
def test_classify_error_tells_overflow_oom_and_engine_failures_apart(message: str,
                                                                     code: ErrorCode) -> None:
    assert classify_error(message) == code


def test_finished_response_becomes_an_engine_output() -> None:
    output = to_output(FakeResponse("A cat.", 300, 4, "stop"))
    assert (output.text, output.prompt_tokens, output.completion_tokens,
            output.finish_reason) == ("A cat.", 300, 4, "stop")
    assert to_output(FakeResponse("A", 300, 32, "length")).finish_reason == "length"


@pytest.mark.parametrize(("response", "code"), [
    (FakeResponse("internal error happened, status code ResponseType.INPUT_LENGTH_ERROR",
                  9000, 0, "error"), ErrorCode.context_overflow),
    (FakeResponse("internal error happened, status code ResponseType.INTERNAL_ENGINE_ERROR",
                  300, 0, "error"), ErrorCode.engine_error),
    (FakeResponse("", 300, 0, "abort"), ErrorCode.engine_error),
])
def test_error_responses_raise_tessera_errors(response: FakeResponse, code: ErrorCode) -> None:
    with pytest.raises(TesseraError) as caught:
        to_output(response)
    assert caught.value.code == code
    assert caught.value.details["finish_reason"] == response.finish_reason


def test_module_imports_without_lmdeploy() -> None:
    if importlib.util.find_spec("lmdeploy") is None:
        assert "lmdeploy" not in sys.modules
