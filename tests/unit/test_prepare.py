"""Cache keys of prepared inputs: content hash plus only the options that change the tiles."""

import pytest

from services.preprocess_worker.prepare import cache_entry
from shared.schemas import MediaKind, MediaOptions

SHA = "ab" * 32


def key(kind: MediaKind, **options: object) -> str:
    """The tiles key of SHA's content with these options (and `exact`, default False)."""
    exact = bool(options.pop("exact", False))
    return cache_entry(sha256=SHA, kind=kind, options=MediaOptions.model_validate(options),
                       exact=exact).tiles_key


def test_cache_entry_is_content_addressed_and_stable() -> None:
    entry = cache_entry(sha256=SHA, kind="image", options=MediaOptions(), exact=False)
    assert entry.tiles_key.startswith(f"cache/prepared/{SHA}-") and entry.tiles_key.endswith(".npy")
    assert entry.tilings_key == entry.tiles_key.removesuffix(".npy") + ".json"
    assert key("image") == key("image")
    assert key("image") != cache_entry(sha256="cd" * 32, kind="image", options=MediaOptions(),
                                       exact=False).tiles_key


@pytest.mark.parametrize(("kind", "changed"), [
    ("image", {"max_tiles": 6}), ("image", {"min_tiles": 2}), ("image", {"exact": True}),
    ("video", {"num_frames": 8}), ("video", {"start_seconds": 1.0}), ("video", {"end_seconds": 2}),
    ("pdf", {"dpi": 72}), ("pdf", {"first_page": 2}), ("pdf", {"last_page": 3}),
    ("pdf", {"max_tiles": 4}),
])
def test_cache_entry_changes_with_options_that_change_tiles(
    kind: MediaKind, changed: dict[str, object]
) -> None:
    assert key(kind, **changed) != key(kind)


@pytest.mark.parametrize(("kind", "ignored"), [
    ("image", {"num_frames": 8}), ("image", {"dpi": 72}), ("video", {"max_tiles": 4}),
    ("video", {"exact": True}), ("video", {"first_page": 2}),
])
def test_cache_entry_ignores_options_that_do_not_touch_this_kind(
    kind: MediaKind, ignored: dict[str, object]
) -> None:
    assert key(kind, **ignored) == key(kind)
