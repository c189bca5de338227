"""Build a tiny random-weights InternVL (real architecture, local tokenizer) for tests and demos."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
    InternVLVisionConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from shared.pixels import IMAGENET_MEAN, IMAGENET_STD, TILE_SIZE
from shared.tile_plan import TOKENS_PER_TILE

# Bump when anything below changes what is built, so ensure_tiny_model rebuilds stale copies.
RECIPE_VERSION = 2
BUILD_INFO = "tiny_model.json"
DEFAULT_OUT = Path(".models/tiny-internvl")

SEED = 20240601
VOCAB_SIZE = 1024
# InternVL3's context: a default 32-frame video (8,192 visual tokens) or a few PDF pages fit.
MAX_POSITIONS = 32768
MAX_TILES = 12

IMG_START, IMG_END, IMG_CONTEXT, VIDEO = "<img>", "</img>", "<IMG_CONTEXT>", "<video>"
IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT, VIDEO]

# ChatML as HF-native InternVL checkpoints write it: no system message unless one is given
# (the engines add the family's default). List contents follow the HF processor.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<IMG_CONTEXT>\\n' -}}"
    "{%- elif part['type'] == 'video' -%}{{- '<video>\\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_VOCABULARY = (
    "the a an this that image picture photo video frame page document chart table text "
    "what is are how many where which who why describe explain count read list show "
    "red green blue yellow black white gray orange purple brown color colour "
    "cat dog person people car tree house sky water road building sign number letter word "
    "left right top bottom center middle corner background foreground small large big "
    "and or of in on at to from with without for by about between above below near "
    "one two three four five six seven eight nine ten first second third last "
    "yes no there it they he she we you I answer question please briefly detail "
    "Image Frame Page InternVL assistant user system model vision language"
)


def _corpus(n_lines: int = 4000) -> list[str]:
    """A deterministic pseudo-English corpus with digits and punctuation."""
    rng = random.Random(SEED)
    vocabulary = _VOCABULARY.split()
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(vocabulary) for _ in range(rng.randint(3, 14))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 2024)))
        sentence = " ".join(words)
        lines.append(sentence[0].upper() + sentence[1:] + rng.choice([".", "?", "!", ":", ","]))
    return lines


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on the generated corpus and wrap it with InternVL's special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        extra_special_tokens={
            "start_image_token": IMG_START,
            "end_image_token": IMG_END,
            "context_image_token": IMG_CONTEXT,
            "video_token": VIDEO,
        },
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
        padding_side="left",
    )


def build_processor(tokenizer: PreTrainedTokenizerFast) -> InternVLProcessor:
    """The HF-native InternVL processor a checkpoint ships (AutoProcessor, LMDeploy's and
    vLLM's HF-native InternVL paths load it): InternVL's tiling, ImageNet mean and std."""
    pixels: dict[str, Any] = {"size": {"height": TILE_SIZE, "width": TILE_SIZE},
                              "image_mean": list(IMAGENET_MEAN),
                              "image_std": list(IMAGENET_STD)}
    return InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(crop_to_patches=True, min_patches=1,
                                              max_patches=MAX_TILES, **pixels),
        video_processor=InternVLVideoProcessor(**pixels), tokenizer=tokenizer,
        image_seq_length=TOKENS_PER_TILE, chat_template=CHAT_TEMPLATE)


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int):
        raise TypeError(f"{token!r} is not a single token")
    return token_id


def build_config(tokenizer: PreTrainedTokenizerFast) -> InternVLConfig:
    """InternVL geometry at full size (448 px tiles, 14 px patches, 0.5 shuffle), tiny widths."""
    vision = InternVLVisionConfig(
        hidden_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=256,
        image_size=448,
        patch_size=14,
    )
    # head_dim 64 in both towers: the smallest size every LMDeploy attention kernel accepts.
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=MAX_POSITIONS,
        eos_token_id=_token_id(tokenizer, IM_END),
        pad_token_id=_token_id(tokenizer, END_OF_TEXT),
        tie_word_embeddings=False,
    )
    return InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=_token_id(tokenizer, IMG_CONTEXT),
        image_seq_length=256,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )


def _init_value(name: str, shape: torch.Size) -> torch.Tensor:
    """A fixed value for one parameter, seeded by its name alone (independent of init order)."""
    if name.endswith("bias"):
        return torch.zeros(shape)
    if "norm" in name:
        return torch.ones(shape)
    if "lambda_" in name:
        return torch.full(shape, 0.1)
    rng = np.random.default_rng([SEED, zlib.crc32(name.encode())])
    # Unit-scale embeddings and head give wide logit margins, so greedy picks survive float noise.
    if "embed_tokens" in name or name == "lm_head.weight":
        std = 1.0
    elif "cls_token" in name or "position_embeddings" in name:
        std = 0.02
    else:
        std = float(1.0 / np.sqrt(np.prod(shape[1:])))
    return torch.from_numpy(rng.normal(0.0, std, size=tuple(shape)).astype(np.float32))


def build_model(tokenizer: PreTrainedTokenizerFast) -> InternVLForConditionalGeneration:
    """An InternVLForConditionalGeneration with deterministic random weights."""
    model = InternVLForConditionalGeneration(build_config(tokenizer))
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.copy_(_init_value(name, tensor.shape))
    model.generation_config.eos_token_id = _token_id(tokenizer, IM_END)
    model.generation_config.pad_token_id = _token_id(tokenizer, END_OF_TEXT)
    model.generation_config.do_sample = False
    return model


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_tiny_model(out_dir: Path) -> Path:
    """Build the tiny model into `out_dir` (created or overwritten in place) and return it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(out_dir)
    build_processor(tokenizer).save_pretrained(out_dir)  # the tokenizer's files too
    for path in out_dir.iterdir():
        path.chmod(0o644)  # the weights are written owner-only; workers may run as another user
    info = {
        "recipe": RECIPE_VERSION,
        "model_sha256": _sha256(out_dir / "model.safetensors"),
        "tokenizer_sha256": _sha256(out_dir / "tokenizer.json"),
    }
    # Written last: its presence marks a complete build.
    (out_dir / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def _is_complete(out_dir: Path) -> bool:
    try:
        info = json.loads((out_dir / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return False
    return bool(info.get("recipe") == RECIPE_VERSION)


def ensure_tiny_model(out_dir: Path) -> Path:
    """Return `out_dir` holding a complete tiny model, building it only if missing or stale."""
    out_dir = Path(out_dir).resolve()
    if _is_complete(out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent callers never see a half-written model.
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
    try:
        build_tiny_model(scratch / "new")
        if out_dir.exists() and not _is_complete(out_dir):
            with contextlib.suppress(FileNotFoundError):  # another caller moved it first
                os.rename(out_dir, scratch / "stale")
        try:
            os.rename(scratch / "new", out_dir)
        except OSError:
            if not _is_complete(out_dir):  # a caller that won the race left a complete build
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out_dir


def main() -> None:
    """Command line: build (if needed) the tiny model and print where it is."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="target directory")
    parser.add_argument("--force", action="store_true", help="rebuild even if complete")
    args = parser.parse_args()
    if args.force and args.out.exists():
        shutil.rmtree(args.out)
    print(ensure_tiny_model(args.out))


if __name__ == "__main__":
    main()
