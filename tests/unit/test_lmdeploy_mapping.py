"""How requests map onto LMDeploy: canvases, messages, backend choice, and 0.18's error fields."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from lmdeploy.messages import Response
from lmdeploy.serve.core.exceptions import ErrorCode as LMDeployErrorCode

from services.inference_worker.engine import EngineImage, EngineRequest
from services.inference_worker.engine_lmdeploy import (
    OUT_OF_MEMORY_MESSAGE,
    build_messages,
    choose_backend,
    error_of,
    grid_canvas,
    to_output,
)
from services.inference_worker.prompt import conversation
from shared.errors import ErrorCode, TesseraError
from shared.schemas import GenerationParams
from shared.tile_plan import TilePlan

GREEDY = GenerationParams(max_new_tokens=32)
ONE = (TilePlan(1, 1, thumbnail=False),)


def _numbered_image(cols: int, rows: int, *, label: str = "") -> EngineImage:
    """Tile k is filled with the value k, so positions in a canvas are easy to check."""
    thumbnail = cols * rows > 1
    count = cols * rows + int(thumbnail)
    tiles = np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None, None],
                            (count, 448, 448, 3)).copy()
    return EngineImage(tiles=tiles, cols=cols, rows=rows, thumbnail=thumbnail, label=label)


def _failed(code: LMDeployErrorCode, message: str | None = None) -> Response:
    """A failed request as 0.18's Pipeline reports one (Pipeline._infer on a RequestError)."""
    return Response(text="", generate_token_len=0, input_token_len=9000, finish_reason="error",
                    error_code=code.value, error_message=message or f"{code.value} happened")


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
    [message] = build_messages(request, None)
    assert message["role"] == "user"
    kinds = [part["type"] for part in message["content"]]
    assert kinds == ["text", "image_data", "text", "image_data", "text"]
    images = [part["image_data"] for part in message["content"] if part["type"] == "image_data"]
    assert [image["max_dynamic_patch"] for image in images] == [6, 1]
    assert [image["data"].size for image in images] == [(3 * 448, 2 * 448), (448, 448)]


@pytest.mark.parametrize("labels", [[""], ["Image-1", "Image-2"], ["Frame1", "Frame2", "Frame3"]])
def test_messages_render_like_the_shared_layout_in_lmdeploy(labels: list[str]) -> None:
    """LMDeploy writes an image part as `<img>…</img>\\n` and joins parts with ''."""
    request = EngineRequest("Q?", [_numbered_image(1, 1, label=label) for label in labels],
                            GREEDY, system="Sys.")
    system, user = build_messages(request, "Default.")
    rendered = "".join(part["text"] if part["type"] == "text" else "<image>\n"
                       for part in user["content"])
    assert system == {"role": "system", "content": "Sys."}
    assert rendered == conversation(request, "Default.")[-1]["content"]


def test_a_turn_without_images_is_plain_text() -> None:
    [message] = build_messages(EngineRequest("Only words?", [], GREEDY), None)
    assert message == {"role": "user", "content": "Only words?"}


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


def test_finished_responses_become_engine_outputs() -> None:
    done = to_output(Response("A cat.", generate_token_len=4, input_token_len=300,
                              finish_reason="stop"), ONE)
    assert (done.text, done.prompt_tokens, done.completion_tokens, done.finish_reason,
            done.seen) == ("A cat.", 300, 4, "stop", ONE)
    cut = Response("A", generate_token_len=32, input_token_len=300, finish_reason="length")
    assert to_output(cut, ONE).finish_reason == "length"


@pytest.mark.parametrize(("lmdeploy_code", "message", "code", "retryable"), [
    (LMDeployErrorCode.CONTEXT_LENGTH_EXCEEDED,
     "Input length (9000) must be smaller than the model context length (8192).",
     ErrorCode.context_overflow, False),
    (LMDeployErrorCode.INVALID_REQUEST, "Unsupported response format: bad schema",
     ErrorCode.invalid_request, False),
    (LMDeployErrorCode.UNSUPPORTED_FEATURE, None, ErrorCode.invalid_request, False),
    (LMDeployErrorCode.INTERNAL_ERROR, OUT_OF_MEMORY_MESSAGE, ErrorCode.out_of_memory, True),
    (LMDeployErrorCode.INTERNAL_ERROR, "An internal server error occurred.",
     ErrorCode.engine_error, True),
    (LMDeployErrorCode.ENGINE_UNAVAILABLE, None, ErrorCode.engine_error, True),
    (LMDeployErrorCode.PREPROCESS_FAILED, None, ErrorCode.engine_error, True),
])
def test_error_responses_become_our_codes(lmdeploy_code: LMDeployErrorCode, message: str | None,
                                         code: ErrorCode, retryable: bool) -> None:
    response = _failed(lmdeploy_code, message)
    with pytest.raises(TesseraError) as caught:
        to_output(response, ONE)
    assert (caught.value.code, caught.value.retryable) == (code, retryable)
    assert caught.value.details["lmdeploy_error_code"] == lmdeploy_code.value
    assert response.error_message in caught.value.message


def test_every_lmdeploy_error_code_has_a_mapping() -> None:
    for lmdeploy_code in LMDeployErrorCode:
        if lmdeploy_code in (LMDeployErrorCode.UNAUTHORIZED, LMDeployErrorCode.MODEL_NOT_FOUND,
                             LMDeployErrorCode.REQUEST_CANCELLED):
            continue  # api_server's own: a pipeline request never ends with these
        assert error_of(_failed(lmdeploy_code)).code in ErrorCode


def test_an_abort_we_asked_for_is_a_cancel_and_any_other_is_an_engine_error() -> None:
    aborted = Response("Par", generate_token_len=3, input_token_len=300, finish_reason="abort")
    assert to_output(aborted, ONE, canceled=True).finish_reason == "canceled"
    with pytest.raises(TesseraError) as caught:
        to_output(aborted, ONE)
    assert caught.value.code == ErrorCode.engine_error


def test_module_imports_without_lmdeploy() -> None:
    """The worker image without the GPU extra can still import the mapping module."""
    code = ("import sys; sys.modules['lmdeploy'] = None; "
            "import services.inference_worker.engine_lmdeploy")
    assert importlib.util.find_spec("lmdeploy") is not None
    subprocess.run([sys.executable, "-c", code], check=True)
