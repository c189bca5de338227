"""The conversation layout every engine prompts with, and the neutralising of reserved markers."""

import numpy as np
import pytest

from services.inference_worker.engine import EngineImage, EngineRequest, Turn
from services.inference_worker.prompt import ZERO_WIDTH_SPACE, conversation, neutralize
from shared.schemas import GenerationParams

GREEDY = GenerationParams(max_new_tokens=8)


def _image(label: str = "") -> EngineImage:
    return EngineImage(tiles=np.zeros((1, 448, 448, 3), dtype=np.uint8), cols=1, rows=1,
                       thumbnail=False, label=label)


def _user_text(request: EngineRequest, default_system: str | None = None) -> str:
    return conversation(request, default_system)[-1]["content"]


def test_a_lone_image_comes_before_the_question_without_a_label() -> None:
    assert _user_text(EngineRequest("What is this?", [_image()], GREEDY)) == (
        "<image>\nWhat is this?")


def test_several_images_are_labelled_image_k() -> None:
    request = EngineRequest("Compare.", [_image("Image-1"), _image("Image-2")], GREEDY)
    assert _user_text(request) == "Image-1: <image>\nImage-2: <image>\nCompare."


def test_video_frames_are_labelled_frame_k() -> None:
    request = EngineRequest("What happens?", [_image(f"Frame{k}") for k in (1, 2, 3)], GREEDY)
    assert _user_text(request) == (
        "Frame1: <image>\nFrame2: <image>\nFrame3: <image>\nWhat happens?")


def test_the_default_system_message_opens_a_conversation_unless_the_request_has_one() -> None:
    plain = EngineRequest("Hi", [], GREEDY)
    own = EngineRequest("Hi", [], GREEDY, system="Be brief.")
    assert conversation(plain, "Default.")[0] == {"role": "system", "content": "Default."}
    assert conversation(own, "Default.")[0] == {"role": "system", "content": "Be brief."}
    assert conversation(plain, None) == [{"role": "user", "content": "Hi"}]
    assert conversation(EngineRequest("Hi", [], GREEDY, system=""), "Default.") == [
        {"role": "user", "content": "Hi"}]


def test_earlier_turns_come_first_with_their_answers() -> None:
    request = EngineRequest("And now?", [], GREEDY, history=(
        Turn("What is it?", [_image()], "A cat."),))
    assert conversation(request, None) == [
        {"role": "user", "content": "<image>\nWhat is it?"},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "And now?"}]


@pytest.mark.parametrize("marker", ["<img>", "</img>", "<IMG_CONTEXT>", "<IMAGE_TOKEN>",
                                    "<image>", "<video>", "<|im_start|>", "<|im_end|>",
                                    "<|endoftext|>", "<s>", "</s>"])
def test_reserved_markers_are_broken_so_they_stay_text(marker: str) -> None:
    text = f"Is {marker} in the picture?"
    assert neutralize(text) == text.replace("<", f"<{ZERO_WIDTH_SPACE}", 1)
    request = EngineRequest(text, [_image()], GREEDY, system=f"sys {marker}",
                            history=(Turn(marker, [], f"answer {marker}"),))
    for message in conversation(request, None):
        assert marker not in message["content"].replace("<image>\n", "")


def test_ordinary_angle_brackets_and_html_are_left_alone() -> None:
    text = "Turn <b>bold</b> into markdown; is 3 < 4 > 2? <images> <imgs>"
    assert neutralize(text) == text
