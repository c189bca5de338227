"""The transformers engine on the tiny InternVL: prompts, decoding, batching, limits."""

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from services.inference_worker.checkpoint import INTERNVL_SYSTEM_MESSAGE
from services.inference_worker.engine import EngineImage, EngineRequest, load_engine
from services.inference_worker.engine_transformers import TransformersEngine
from services.inference_worker.prompt import ZERO_WIDTH_SPACE
from shared.errors import ErrorCode, TesseraError
from shared.schemas import GenerationParams

GREEDY = GenerationParams(max_new_tokens=8)


def _image(cols: int = 1, rows: int = 1, *, label: str = "", seed: int = 0) -> EngineImage:
    thumbnail = cols * rows > 1
    tiles = np.random.default_rng(seed).integers(
        0, 256, (cols * rows + int(thumbnail), 448, 448, 3), dtype=np.uint8)
    return EngineImage(tiles=tiles, cols=cols, rows=rows, thumbnail=thumbnail, label=label)


def _frames(count: int) -> list[EngineImage]:
    return [_image(label=f"Frame{k}", seed=k) for k in range(1, count + 1)]


def _collapse_context(prompt: str) -> str:
    """Write each run of context tokens as <IMG_CONTEXT>*N, to compare prompts readably."""
    return re.sub(r"(?:<IMG_CONTEXT>)+",
                  lambda m: f"<IMG_CONTEXT>*{len(m.group(0)) // len('<IMG_CONTEXT>')}", prompt)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> TransformersEngine:
    return TransformersEngine(tiny_model_dir)


@pytest.fixture
def forced_eos(engine: TransformersEngine) -> Iterator[None]:
    """Make end-of-sequence the model's top choice at every step."""
    eos = engine.eos_token_ids[0]

    def hook(_module: torch.nn.Module, _inputs: Any, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        logits[..., eos] = 1e4
        return logits

    handle = engine.model.lm_head.register_forward_hook(hook)
    yield
    handle.remove()


def test_engine_image_rejects_tiles_that_do_not_match_its_grid() -> None:
    tiles = np.zeros((4, 448, 448, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="has 5 tiles"):
        EngineImage(tiles=tiles, cols=2, rows=2, thumbnail=True)
    with pytest.raises(ValueError, match="uint8"):
        EngineImage(tiles=tiles[:1].astype(np.float32), cols=1, rows=1, thumbnail=False)


def test_load_engine_builds_the_transformers_engine(tiny_model_dir: Path) -> None:
    engine = load_engine("transformers", tiny_model_dir)
    assert engine.name == "transformers"
    assert engine.limits.context_length == 32768 and engine.limits.tile_bounds is None
    engine.close()
    with pytest.raises(ValueError, match="unknown engine"):
        load_engine("vllm", tiny_model_dir)  # type: ignore[arg-type]


def test_close_answers_what_waits_then_stops_the_batching_thread(tiny_model_dir: Path) -> None:
    engine = TransformersEngine(tiny_model_dir)
    assert engine.generate(EngineRequest("Hi", [], GREEDY)).completion_tokens > 0
    engine.close()
    assert not engine._batcher.is_alive()


def test_the_family_system_message_opens_a_conversation_without_one(
        tiny_model_dir: Path) -> None:
    engine = TransformersEngine(tiny_model_dir, system_message=INTERNVL_SYSTEM_MESSAGE)
    plain = EngineRequest("Hi", [], GREEDY)
    own = EngineRequest("Hi", [], GREEDY, system="Answer in French.")
    assert engine.prompt(plain).startswith(
        f"<|im_start|>system\n{INTERNVL_SYSTEM_MESSAGE}<|im_end|>\n<|im_start|>user\nHi")
    assert engine.prompt(own).startswith("<|im_start|>system\nAnswer in French.<|im_end|>\n")
    engine.close()


def test_single_image_expands_to_256_context_tokens_per_tile(engine: TransformersEngine) -> None:
    one_tile = EngineRequest("What is this?", [_image()], GREEDY)
    grid = EngineRequest("What is this?", [_image(2, 1)], GREEDY)  # 2 tiles + thumbnail

    assert _collapse_context(engine.prompt(one_tile)).endswith(
        "<|im_start|>user\n<img><IMG_CONTEXT>*256</img>\nWhat is this?<|im_end|>\n"
        "<|im_start|>assistant\n")
    first, second = engine.generate(one_tile), engine.generate(grid)
    assert second.prompt_tokens - first.prompt_tokens == 2 * 256
    assert 0 < first.completion_tokens <= 8
    assert first.finish_reason in ("stop", "length")


def test_multi_image_prompt_labels_each_image_block(engine: TransformersEngine) -> None:
    request = EngineRequest("Compare.", [_image(2, 1, label="Image-1"),
                                         _image(label="Image-2", seed=1)], GREEDY)
    assert _collapse_context(engine.prompt(request)).endswith(
        "user\nImage-1: <img><IMG_CONTEXT>*768</img>\nImage-2: <img><IMG_CONTEXT>*256</img>\n"
        "Compare.<|im_end|>\n<|im_start|>assistant\n")
    assert engine.generate(request).completion_tokens > 0


def test_video_frames_are_one_tile_each_labelled_frame_k(engine: TransformersEngine) -> None:
    request = EngineRequest("What happens?", _frames(3), GREEDY)
    block = "<img><IMG_CONTEXT>*256</img>\n"
    assert _collapse_context(engine.prompt(request)).endswith(
        f"user\nFrame1: {block}Frame2: {block}Frame3: {block}What happens?<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert engine.generate(request).completion_tokens > 0


def test_greedy_decoding_repeats_exactly(engine: TransformersEngine) -> None:
    request = EngineRequest("Describe the picture.", [_image()], GREEDY)
    assert engine.generate(request) == engine.generate(request)


def test_seeded_sampling_repeats_and_leaves_the_global_rng_alone(
        engine: TransformersEngine) -> None:
    def sample(seed: int) -> str:
        params = GenerationParams(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=seed)
        return engine.generate(EngineRequest("Describe.", [_image()], params)).text

    rng_state = torch.get_rng_state()
    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    assert torch.equal(torch.get_rng_state(), rng_state)


@pytest.mark.usefixtures("forced_eos")
def test_min_new_tokens_holds_back_the_end_of_sequence(engine: TransformersEngine) -> None:
    image = _image()
    eager = engine.generate(EngineRequest("Hi", [image], GenerationParams(max_new_tokens=8)))
    held = engine.generate(EngineRequest("Hi", [image], GenerationParams(max_new_tokens=8,
                                                                         min_new_tokens=5)))
    assert (eager.completion_tokens, eager.finish_reason, eager.text) == (0, "stop", "")
    assert (held.completion_tokens, held.finish_reason) == (5, "stop")


def test_reaching_max_new_tokens_finishes_with_length(engine: TransformersEngine) -> None:
    params = GenerationParams(max_new_tokens=6, min_new_tokens=6)
    output = engine.generate(EngineRequest("Hi", [_image()], params))
    assert (output.completion_tokens, output.finish_reason) == (6, "length")


def test_prompt_beyond_max_positions_raises_context_overflow(
        engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "max_positions", 4096)
    tiles = np.zeros((17, 448, 448, 3), dtype=np.uint8)  # 4x4 grid + thumbnail = 4352 tokens
    image = EngineImage(tiles=tiles, cols=4, rows=4, thumbnail=True)
    with pytest.raises(TesseraError) as caught:
        engine.generate(EngineRequest("Describe.", [image], GREEDY))
    assert caught.value.code == ErrorCode.context_overflow
    assert "17 image tiles" in caught.value.message
    assert "4096" in caught.value.message


def test_reserved_markers_in_the_question_reach_the_model_as_text(
        engine: TransformersEngine) -> None:
    request = EngineRequest("Is <IMG_CONTEXT> or <img> or <|im_end|> here?", [_image()], GREEDY)
    ids = engine.input_ids(request)
    assert ids.count(engine.image_token_id) == 256  # only the image's own
    assert f"<{ZERO_WIDTH_SPACE}IMG_CONTEXT>" in engine.prompt(request)
    assert engine.generate(request).completion_tokens > 0


def test_concurrent_callers_get_what_each_would_alone(engine: TransformersEngine) -> None:
    sampled = GenerationParams(max_new_tokens=8, temperature=0.7, seed=3)
    requests = [
        EngineRequest("What is this?", [_image()], GREEDY),
        EngineRequest("Compare them in detail.", [_image(2, 1, label="Image-1"),
                                                  _image(label="Image-2", seed=5)], GREEDY),
        EngineRequest("A text-only question with no image at all.", [], GREEDY),
        EngineRequest("What happens?", _frames(2), GREEDY),
        EngineRequest("Sampled on its own.", [_image(seed=9)], sampled),
    ]
    alone = [engine.generate(request) for request in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(engine.generate, requests))
    assert together == alone


def test_streamed_pieces_add_up_to_the_answer(engine: TransformersEngine) -> None:
    pieces: list[str] = []
    request = EngineRequest(question="Stream?", images=[_image()],
                            generation=GenerationParams(max_new_tokens=12, min_new_tokens=12))
    output = engine.generate(request, pieces.append)
    assert len(pieces) > 1
    assert "".join(pieces) == output.text


def test_history_turns_come_before_the_question_with_their_answers(
        engine: TransformersEngine) -> None:
    from services.inference_worker.engine import Turn

    earlier = Turn("What is it?", [_image(seed=1)], "A cat.")
    request = EngineRequest(question="What colour?", images=[], generation=GREEDY,
                            history=(earlier,))
    prompt = _collapse_context(engine.prompt(request))
    assert prompt.index("What is it?") < prompt.index("A cat.") < prompt.index("What colour?")
    assert prompt.count("<IMG_CONTEXT>*256") == 1
    # The history's tiles reach the model: the request runs and counts them as prompt tokens.
    assert engine.generate(request).prompt_tokens > 256
