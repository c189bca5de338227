"""What the engines need to know about a local InternVL checkpoint, read from its config files.

Two formats exist: the original remote-code one (`InternVLChatModel`, `llm_config`, tiling
settings in config.json) and the HF-native one (`InternVLForConditionalGeneration`,
`text_config`, tiling settings in the processor config). The engines must treat both alike:
the same prompt (system message included) and the same tiles for the same weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from services.inference_worker.engine import tokens_per_tile
from shared.tile_plan import MAX_TILES_LIMIT, TileBounds, TilePlan, plan_tiles

CheckpointFormat = Literal["original", "hf"]
ORIGINAL_ARCHITECTURE = "InternVLChatModel"

# The system message InternVL2.5 and InternVL3 were trained with: upstream `chat()` (template
# "internvl2_5") and LMDeploy, for original checkpoints, put it in every prompt without one.
INTERNVL_SYSTEM_MESSAGE = ("你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及"  # noqa: RUF001
                           "多家合作单位联合开发的多模态大语言模型。")
# Model families by name prefix (catalogue spelling, lower case) and their default system
# message; InternVL3.5 dropped it.
_FAMILY_SYSTEM_MESSAGES = (("internvl3_5", None), ("internvl3", INTERNVL_SYSTEM_MESSAGE),
                           ("internvl2_5", INTERNVL_SYSTEM_MESSAGE))
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


@dataclass(frozen=True)
class CheckpointTiling:
    """How the checkpoint's own image processing tiles an image an engine hands it whole.

    Original checkpoints take each image's maximum from the request (`max_dynamic_patch`) with
    the minimum and thumbnail from config.json; HF-native ones apply the processor's bounds to
    every image whatever the request says.
    """

    bounds: TileBounds
    per_image_max: bool
    thumbnail: bool

    def grid(self, width: int, height: int, requested_max: int) -> TilePlan:
        """The grid this tiling gives a width x height image sent with `requested_max`."""
        max_tiles = requested_max if self.per_image_max else self.bounds.max_tiles
        if self.bounds.min_tiles > max_tiles:
            # No grid qualifies: the reference falls back to one tile without a thumbnail.
            return TilePlan(1, 1, thumbnail=False)
        plan = plan_tiles(width, height, min_tiles=self.bounds.min_tiles, max_tiles=max_tiles)
        return TilePlan(plan.cols, plan.rows, plan.thumbnail and self.thumbnail)


@dataclass(frozen=True)
class Checkpoint:
    """The facts of one checkpoint directory the engines and the model card rely on."""

    path: Path
    format: CheckpointFormat
    tokens_per_tile: int
    context_length: int
    # The default system message of the model's family (None: the family has none).
    system_message: str | None
    # None for an HF-native checkpoint without a processor config (no engine but ours loads it).
    tiling: CheckpointTiling | None


def read_checkpoint(model_dir: Path, name: str | None = None) -> Checkpoint:
    """The facts of an InternVL checkpoint (either format); `name` helps find its family."""
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    architectures = config.get("architectures") or []
    checkpoint_format: CheckpointFormat = ("original" if ORIGINAL_ARCHITECTURE in architectures
                                           else "hf")
    llm = config.get("llm_config") or config.get("text_config") or {}
    vision = config["vision_config"]
    image_size = config.get("force_image_size") or vision["image_size"]
    return Checkpoint(
        path=model_dir, format=checkpoint_format,
        tokens_per_tile=tokens_per_tile(image_size, vision["patch_size"],
                                        config["downsample_ratio"]),
        context_length=int(llm.get("max_position_embeddings") or 0),
        system_message=family_system_message(name or model_dir.name, config),
        tiling=(_original_tiling(config) if checkpoint_format == "original"
                else _processor_tiling(model_dir)))


def family_system_message(name: str, config: dict[str, Any] | None = None) -> str | None:
    """The default system message of a model, by its name's family or its original template."""
    wanted = name.lower().replace(".", "_").removeprefix("opengvlab/")
    for prefix, message in _FAMILY_SYSTEM_MESSAGES:
        if wanted.startswith(prefix):
            return message
    if config is not None and config.get("template") == "internvl2_5":
        return INTERNVL_SYSTEM_MESSAGE
    return None


def image_processor_config(model_dir: Path) -> dict[str, Any] | None:
    """The checkpoint's image processor settings (new nested or old flat file), if it has any."""
    for filename in _PROCESSOR_FILES:
        path = Path(model_dir) / filename
        if path.is_file():
            data = _read_json(path)
            nested = data.get("image_processor")
            return nested if isinstance(nested, dict) else data
    return None


def _original_tiling(config: dict[str, Any]) -> CheckpointTiling:
    if not config.get("dynamic_image_size", False):
        # InternVL before 1.5: the whole image resized to one tile.
        return CheckpointTiling(TileBounds(1, 1), per_image_max=False, thumbnail=False)
    return CheckpointTiling(TileBounds(int(config.get("min_dynamic_patch", 1)), MAX_TILES_LIMIT),
                            per_image_max=True, thumbnail=bool(config.get("use_thumbnail", True)))


def _processor_tiling(model_dir: Path) -> CheckpointTiling | None:
    settings = image_processor_config(model_dir)
    if settings is None:
        return None
    # InternVL's processors always crop to patches (their call defaults say so), whatever the
    # saved `crop_to_patches`, and add a thumbnail to multi-tile grids.
    bounds = TileBounds(int(settings.get("min_patches", 1)), int(settings.get("max_patches", 12)))
    return CheckpointTiling(bounds, per_image_max=False, thumbnail=True)


def _read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data
