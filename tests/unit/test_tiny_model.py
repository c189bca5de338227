"""The tiny InternVL: deterministic builds, InternVL's special tokens, 256 visual tokens a tile."""

import hashlib
import json
import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig, InternVLForConditionalGeneration

from scripts.build_tiny_model import BUILD_INFO, build_tiny_model, ensure_tiny_model
from services.inference_worker.engine import tokens_per_tile

SPECIAL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<|im_start|>", "<|im_end|>",
                  "<|endoftext|>"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_builds_write_identical_weights_and_tokenizer(tmp_path: Path,
                                                          tiny_model_dir: Path) -> None:
    first, second = build_tiny_model(tmp_path / "a"), build_tiny_model(tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha256(first / name) == _sha256(second / name), name
    # The shared fixture may have been built by another process: same bytes there too.
    recorded = json.loads((tiny_model_dir / BUILD_INFO).read_text())
    assert recorded["model_sha256"] == _sha256(first / "model.safetensors")
    assert recorded["tokenizer_sha256"] == _sha256(first / "tokenizer.json")


def test_ensure_rebuilds_an_incomplete_directory_then_reuses_it(tmp_path: Path) -> None:
    target = tmp_path / "tiny"
    target.mkdir()
    (target / "leftover.bin").write_bytes(b"half-written")

    assert ensure_tiny_model(target) == target.resolve()
    assert (target / BUILD_INFO).exists()
    assert not (target / "leftover.bin").exists()
    built_at = (target / "model.safetensors").stat().st_mtime_ns

    ensure_tiny_model(target)
    assert (target / "model.safetensors").stat().st_mtime_ns == built_at
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no scratch directories left


def test_concurrent_ensure_calls_all_return_one_complete_build(tmp_path: Path) -> None:
    target = tmp_path / "tiny"
    results: list[Path] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(ensure_tiny_model(target))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert results == [target.resolve()] * 2
    assert (target / BUILD_INFO).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]


def test_tokenizer_has_internvl_special_tokens_as_single_ids(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    assert len(set(ids.values())) == len(SPECIAL_TOKENS)
    for token, token_id in ids.items():
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [token_id], token
    text = "".join(SPECIAL_TOKENS) + "A red car."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"],
                            skip_special_tokens=True) == "A red car."
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.context_image_token == "<IMG_CONTEXT>"


def test_config_points_image_and_stop_tokens_at_the_tokenizer(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    generation = GenerationConfig.from_pretrained(tiny_model_dir)
    assert config["architectures"] == ["InternVLForConditionalGeneration"]
    assert config["image_token_id"] == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert generation.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert generation.pad_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert config["text_config"]["vocab_size"] == len(tokenizer)


def test_chat_template_renders_internvl_chatml(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False, add_generation_prompt=True)
    assert prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                      "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    # As in HF-native InternVL checkpoints, no system message unless one is given: the
    # engines add the model family's default.
    default = str(tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}],
                                                tokenize=False))
    assert default == "<|im_start|>user\nHi<|im_end|>\n"


def test_each_448px_tile_becomes_256_visual_tokens(tiny_model_dir: Path) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    vision = config["vision_config"]
    assert (vision["image_size"], vision["patch_size"]) == ([448, 448], [14, 14])
    assert tokens_per_tile(vision["image_size"], vision["patch_size"],
                           config["downsample_ratio"]) == 256
    model = InternVLForConditionalGeneration.from_pretrained(tiny_model_dir)
    with torch.inference_mode():
        features = model.get_image_features(torch.zeros(2, 3, 448, 448)).pooler_output
    assert tuple(features.shape) == (2, 256, config["text_config"]["hidden_size"])


@pytest.mark.parametrize(("image_size", "patch_size", "ratio", "expected"),
                         [(448, 14, 0.5, 256), ((448, 448), (14, 14), 0.5, 256),
                          (224, 14, 0.5, 64)])
def test_tokens_per_tile_follows_the_geometry(image_size: int | tuple[int, int],
                                              patch_size: int | tuple[int, int], ratio: float,
                                              expected: int) -> None:
    assert tokens_per_tile(image_size, patch_size, ratio) == expected
