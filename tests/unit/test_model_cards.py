"""Model cards narrow a job's tile bounds to what its model's engine keeps to."""

from shared.job_store import utcnow
from shared.model_cards import ModelCard
from shared.schemas import MediaOptions


def test_a_card_narrows_tile_bounds_without_crossing_them() -> None:
    card = ModelCard(name="m", engine="lmdeploy", context_length=8192, tokens_per_tile=256,
                     min_tiles=2, max_tiles=12, updated_at=utcnow())
    narrowed = card.planned_options(MediaOptions(min_tiles=1, max_tiles=40))
    assert (narrowed.min_tiles, narrowed.max_tiles) == (2, 12)
    low = card.planned_options(MediaOptions(min_tiles=1, max_tiles=1))
    assert (low.min_tiles, low.max_tiles) == (2, 2)
    free = card.model_copy(update={"min_tiles": None, "max_tiles": None})
    assert free.planned_options(MediaOptions(max_tiles=40)).max_tiles == 40
