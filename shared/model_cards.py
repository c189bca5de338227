"""Model cards: what a served model's engine accepts, published by its replicas in Redis.

An inference replica writes its model's card once its engine is up: the context length, the
visual tokens per tile and, for engines that re-tile every image themselves (LMDeploy on an
HF-native checkpoint, say), the grid bounds they keep to. Preprocessing plans jobs inside those
bounds, so the model sees the grid the job was planned with; the APIs can refuse a job that
cannot fit the context and list what is served. A card survives its replicas (scale to zero).
"""

from datetime import datetime

import redis
from pydantic import BaseModel, Field

from shared.schemas import MediaOptions
from shared.tile_plan import TileBounds


class ModelCard(BaseModel):
    """One served model as its engine reported it."""

    name: str
    engine: str
    context_length: int = Field(ge=1)
    tokens_per_tile: int = Field(ge=1)
    # The grid sizes the engine re-tiles every image within; None when any planned grid
    # reaches the model as planned.
    min_tiles: int | None = None
    max_tiles: int | None = None
    updated_at: datetime

    @property
    def tile_bounds(self) -> TileBounds | None:
        """The engine's grid bounds, if it has any."""
        if self.min_tiles is None or self.max_tiles is None:
            return None
        return TileBounds(self.min_tiles, self.max_tiles)

    def planned_options(self, options: MediaOptions) -> MediaOptions:
        """`options` with the tile bounds narrowed to what the engine keeps to."""
        bounds = self.tile_bounds
        if bounds is None:
            return options
        wanted = TileBounds(options.min_tiles, options.max_tiles).within(bounds)
        return options.model_copy(update={"min_tiles": wanted.min_tiles,
                                          "max_tiles": wanted.max_tiles})


class ModelCardStore:
    """The cards of every model served, one Redis string (JSON) per model."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix

    def _key(self, name: str) -> str:
        return f"{self.prefix}:model-card:{name}"

    def publish(self, card: ModelCard) -> None:
        """Write (or replace) the card of `card.name`."""
        self.redis.set(self._key(card.name), card.model_dump_json())

    def get(self, name: str) -> ModelCard | None:
        """The card of model `name`, or None while none of its replicas has started."""
        raw = self.redis.get(self._key(name))
        return None if raw is None else ModelCard.model_validate_json(raw)
