"""The engine interface (requests, outputs) and the user turn InternVL expects; no engine here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from shared.schemas import GenerationParams

TILE_SIZE = 448
IMAGE_PLACEHOLDER = "<image>"

FinishReason = Literal["stop", "length"]


# eq=False: numpy arrays have no single truth value, so field-wise equality would raise.
@dataclass(frozen=True, eq=False)
class EngineImage:
    """One `<image>` placeholder: its tiles, grid layout and prompt label."""

    tiles: np.ndarray  # uint8 (n, 448, 448, 3) RGB; grid tiles row-major, then the thumbnail if any
    cols: int
    rows: int
    thumbnail: bool
    label: str = ""  # prompt prefix: "" for a lone image, "Image-1", "Frame3", ...

    def __post_init__(self) -> None:
        if self.tiles.dtype != np.uint8 or self.tiles.shape[1:] != (TILE_SIZE, TILE_SIZE, 3):
            raise ValueError(f"tiles must be uint8 (n, {TILE_SIZE}, {TILE_SIZE}, 3), got "
                             f"{self.tiles.dtype} {self.tiles.shape}")
        if self.cols < 1 or self.rows < 1:
            raise ValueError(f"grid must be at least 1x1, got {self.cols}x{self.rows}")
        expected = self.cols * self.rows + int(self.thumbnail)
        if self.tiles.shape[0] != expected:
            raise ValueError(f"a {self.cols}x{self.rows} grid (thumbnail={self.thumbnail}) has "
                             f"{expected} tiles, got {self.tiles.shape[0]}")

    @property
    def num_tiles(self) -> int:
        """Tiles the model sees for this image, thumbnail included."""
        return int(self.tiles.shape[0])


@dataclass(frozen=True)
class EngineRequest:
    """One question about zero or more images, with how to decode the answer."""

    question: str
    images: list[EngineImage]
    generation: GenerationParams


@dataclass(frozen=True)
class EngineOutput:
    """The answer and its token counts; `finish_reason` says whether it ended or was cut."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


class Engine(Protocol):
    """What the inference worker needs from a model engine."""

    name: str

    def generate(self, request: EngineRequest) -> EngineOutput:
        """Answer one request."""
        ...


def user_prompt(request: EngineRequest,
                render_image: Callable[[EngineImage], str] | None = None) -> str:
    """The user turn in InternVL's layout: a `label: <image>` line per image, then the question.

    A lone unlabelled image gives `<image>\\n{question}`. `render_image` replaces the `<image>`
    placeholder per image (an engine expands it into its image tokens).
    """
    lines = []
    for image in request.images:
        placeholder = render_image(image) if render_image else IMAGE_PLACEHOLDER
        lines.append(f"{image.label}: {placeholder}\n" if image.label else f"{placeholder}\n")
    return "".join(lines) + request.question


def tokens_per_tile(image_size: int | Sequence[int], patch_size: int | Sequence[int],
                    downsample_ratio: float) -> int:
    """Visual tokens one tile becomes: (image_size / patch_size)^2 * downsample_ratio^2.

    Sizes come from model configs as an int or a square (height, width) pair.
    """
    side = image_size if isinstance(image_size, int) else image_size[0]
    patch = patch_size if isinstance(patch_size, int) else patch_size[0]
    return round((side // patch) ** 2 * downsample_ratio**2)


def load_engine(kind: Literal["transformers", "lmdeploy"], model_path: Path,
                **options: Any) -> Engine:
    """Build the chosen engine on a local model directory, importing its library only now."""
    if kind == "transformers":
        from services.inference_worker.engine_transformers import TransformersEngine

        return TransformersEngine(model_path, **options)
    if kind == "lmdeploy":
        from services.inference_worker.engine_lmdeploy import LMDeployEngine

        return LMDeployEngine(model_path, **options)
    raise ValueError(f"unknown engine kind {kind!r}; use 'transformers' or 'lmdeploy'")
