"""The engine interface: requests, outputs and what an engine tells the rest of the system."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from shared.pixels import TILE_SIZE
from shared.schemas import GenerationParams
from shared.tile_plan import TileBounds, TilePlan

EngineKind = Literal["transformers", "lmdeploy"]
FinishReason = Literal["stop", "length", "canceled"]
# Receives each new piece of the answer while it is being generated.
OnText = Callable[[str], None]


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
    def plan(self) -> TilePlan:
        """The grid the tiles were cut in."""
        return TilePlan(self.cols, self.rows, self.thumbnail)

    @property
    def num_tiles(self) -> int:
        """Tiles the model sees for this image, thumbnail included."""
        return int(self.tiles.shape[0])


@dataclass(frozen=True)
class Turn:
    """An earlier exchange of the conversation: its question, images and the model's answer."""

    question: str
    images: list[EngineImage]
    answer: str


@dataclass(frozen=True)
class EngineRequest:
    """One question about zero or more images, with how to decode the answer.

    `history` holds earlier turns, oldest first; `system` replaces the model's default system
    message; `json_schema` asks for JSON output that matches it (guided decoding).
    """

    question: str
    images: list[EngineImage]
    generation: GenerationParams
    history: tuple[Turn, ...] = ()
    system: str | None = None
    json_schema: dict[str, Any] | None = None
    # Polled while generating; True stops this request early with finish_reason "canceled".
    should_stop: Callable[[], bool] | None = field(default=None, compare=False)

    @property
    def all_images(self) -> list[EngineImage]:
        """Every image of the conversation in prompt order: earlier turns' first."""
        return [image for turn in self.history for image in turn.images] + self.images


@dataclass(frozen=True)
class EngineOutput:
    """The answer, its token counts, why it ended, and the grid the model saw of each image of
    the request (its own turn, in order): the planned one unless the engine re-tiled it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    seen: tuple[TilePlan, ...] = ()


@dataclass(frozen=True)
class EngineLimits:
    """What jobs for this engine must respect, published in the model's card.

    `tile_bounds` is None when any planned grid reaches the model as planned; otherwise the
    engine re-tiles each image within these bounds, so jobs must be planned inside them.
    """

    context_length: int
    tokens_per_tile: int
    tile_bounds: TileBounds | None = None


class Engine(Protocol):
    """What the inference worker needs from a model engine: thread-safe, batching calls that
    arrive concurrently (the worker keeps many jobs in flight)."""

    name: str
    limits: EngineLimits

    def generate(self, request: EngineRequest, on_text: OnText | None = None) -> EngineOutput:
        """Answer one request, handing on_text each new piece of text as it is generated."""
        ...

    def close(self) -> None:
        """Stop the engine and free what it holds (GPU memory, threads)."""
        ...


def tokens_per_tile(image_size: int | Sequence[int], patch_size: int | Sequence[int],
                    downsample_ratio: float) -> int:
    """Visual tokens one tile becomes: (image_size / patch_size)^2 * downsample_ratio^2.

    Sizes come from model configs as an int or a square (height, width) pair.
    """
    side = image_size if isinstance(image_size, int) else image_size[0]
    patch = patch_size if isinstance(patch_size, int) else patch_size[0]
    return round((side // patch) ** 2 * downsample_ratio**2)


def load_engine(kind: EngineKind, model_path: Path, **options: Any) -> Engine:
    """Build the chosen engine on a local model directory, importing its library only now."""
    if kind == "transformers":
        from services.inference_worker.engine_transformers import TransformersEngine

        return TransformersEngine(model_path, **options)
    if kind == "lmdeploy":
        from services.inference_worker.engine_lmdeploy import LMDeployEngine

        return LMDeployEngine(model_path, **options)
    raise ValueError(f"unknown engine kind {kind!r}; use 'transformers' or 'lmdeploy'")
