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


def test_the_fewest_tokens_count_frames_pages_and_one_tile_an_image() -> None:
    from shared.context_budget import InputShape, minimum_visual_tokens

    shapes = [InputShape("video"), InputShape("pdf", pages=3), InputShape("pdf"),
              InputShape("image"), InputShape(None)]
    tokens, what = minimum_visual_tokens(shapes, MediaOptions(num_frames=32), 256)
    assert tokens == 32 * 258 + (3 + 1 + 2) * 258
    assert what == "32 video frames and 4 pages and 2 images"
    ranged = minimum_visual_tokens([InputShape("pdf", pages=10)],
                                   MediaOptions(first_page=3, last_page=5, min_tiles=2), 256)
    assert ranged[0] == 3 * (3 * 256 + 2)  # 2 tiles and the thumbnail a page


def test_media_that_leaves_no_room_in_the_context_is_refused_with_the_numbers() -> None:
    import pytest

    from shared.context_budget import check_fits
    from shared.errors import ErrorCode, TesseraError

    card = ModelCard(name="small", engine="transformers", context_length=4096,
                     tokens_per_tile=256, updated_at=utcnow())
    check_fits(4095, "15 video frames", card)
    with pytest.raises(TesseraError) as caught:
        check_fits(8256, "32 video frames", card)
    assert caught.value.code == ErrorCode.context_overflow
    assert "8,256 visual tokens (32 video frames" in caught.value.message
    assert "4,096" in caught.value.message and "num_frames" in caught.value.message
