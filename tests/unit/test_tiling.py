"""InternVL tiling: grids and pixels against the reference code and transformers' processor."""

import io
import itertools

import numpy as np
import pytest
from PIL import Image
from transformers import GotOcr2ImageProcessorPil
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

from services.preprocess_worker.tiling import image_to_pixel_values, tile_image, tile_image_bytes
from shared.pixels import IMAGENET_MEAN, IMAGENET_STD, TILE_SIZE, normalize_tiles
from shared.tile_plan import TOKENS_PER_TILE, TilePlan, plan_tiles

S = TILE_SIZE
# Widths and heights that cover slivers, small images, multiples of the tile and large photos.
SWEEP = sorted({*range(1, 4000, 97), 224, 447, 448, 449, 672, 896, 1344, 1792, 3584})
# Images whose aspect ratio equals a grid's exactly, at areas on both sides of the tie rule.
EXACT_RATIOS = [
    (round(cols * S * scale), round(rows * S * scale))
    for cols, rows in itertools.product(range(1, 41), repeat=2)
    if cols * rows <= 40
    for scale in (0.25, 0.5, 0.75, 1.0, 1.5)
]
# Measured: bit-identical. The bound only admits float32 rounding, far below one uint8 step
# (1 / 255 / 0.229 = 0.017 after normalisation).
PIXEL_TOLERANCE = 1e-6


def reference_grid(width: int, height: int, min_num: int, max_num: int) -> tuple[int, int]:
    """The grid choice of InternVL's model-card `dynamic_preprocess`, copied from there."""
    target_ratios = set(
        (i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1)
        for j in range(1, n + 1) if i * j <= max_num and i * j >= min_num)
    ordered_ratios = sorted(target_ratios, key=lambda x: x[0] * x[1])
    aspect_ratio = width / height
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in ordered_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff and area > 0.5 * S * S * ratio[0] * ratio[1]:
            best_ratio = ratio
    return best_ratio


def transformers_processor(max_tiles: int) -> GotOcr2ImageProcessorPil:
    """transformers' InternVL processor, configured as the InternVL checkpoints configure it."""
    return GotOcr2ImageProcessorPil(
        size={"height": S, "width": S},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        crop_to_patches=True,
        min_patches=1,
        max_patches=max_tiles,
    )


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour gradients with sensor-like noise, so resampling differences would show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    channels = [255 * x / width, 255 * y / height, 127 + 127 * np.sin((x + y) / 37.0)]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 18, (height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("max_tiles", [1, 2, 6, 12, 24, 40])
def test_plan_tiles_matches_transformers_grid_over_size_sweep(max_tiles: int) -> None:
    sizes = [*itertools.product(SWEEP, SWEEP), *EXACT_RATIOS]
    for width, height in sizes:
        plan = plan_tiles(width, height, max_tiles=max_tiles)
        expected = get_optimal_tiled_canvas((height, width), (S, S), 1, max_tiles)
        assert (plan.cols, plan.rows) == expected, (width, height)


@pytest.mark.parametrize(("min_tiles", "max_tiles"), [(1, 12), (2, 12), (4, 4), (5, 5), (6, 7),
                                                      (8, 9), (3, 40)])
def test_plan_tiles_matches_reference_code_including_min_tiles(
    min_tiles: int, max_tiles: int
) -> None:
    for width, height in [*itertools.product(SWEEP[::3], SWEEP[::3]), *EXACT_RATIOS]:
        plan = plan_tiles(width, height, min_tiles=min_tiles, max_tiles=max_tiles)
        assert (plan.cols, plan.rows) == reference_grid(width, height, min_tiles, max_tiles)


def test_plan_tiles_breaks_same_count_ties_in_reference_set_order() -> None:
    # 13:5 is equally far from 5:1 and 1:5; the reference's set lists (5, 1) first, while
    # transformers' plain loop lists (1, 5) first, so the two disagree when min_tiles > 1.
    assert plan_tiles(13, 5, min_tiles=5, max_tiles=5) == TilePlan(5, 1, thumbnail=True)
    assert get_optimal_tiled_canvas((5, 13), (S, S), 5, 5) == (1, 5)


def test_plan_tiles_prefers_larger_grid_on_tie_when_image_is_large() -> None:
    # Square images tie between 1x1, 2x2 and 3x3; a larger grid wins once the image covers
    # more than half of its canvas (2x2: 401,408 px, 3x3: 903,168 px).
    assert plan_tiles(700, 700) == TilePlan(2, 2, thumbnail=True)
    assert plan_tiles(1000, 1000) == TilePlan(3, 3, thumbnail=True)
    # 3:2 is equally far from 1:1 and 2:1 when those are the only grids.
    assert plan_tiles(600, 400, max_tiles=2) == TilePlan(2, 1, thumbnail=True)


def test_plan_tiles_keeps_smaller_grid_on_tie_when_image_is_small() -> None:
    assert plan_tiles(600, 600) == TilePlan(1, 1, thumbnail=False)
    assert plan_tiles(300, 200, max_tiles=2) == TilePlan(1, 1, thumbnail=False)


def test_plan_tiles_adds_thumbnail_only_to_multi_tile_grids() -> None:
    assert plan_tiles(448, 448).num_tiles == 1
    wide = plan_tiles(1792, 448)
    assert (wide.cols, wide.rows, wide.thumbnail, wide.num_tiles) == (4, 1, True, 5)
    assert wide.num_tiles * TOKENS_PER_TILE == 1280


def test_presized_canvas_retiles_to_its_grid_when_max_is_its_tile_count() -> None:
    for cols, rows in itertools.product(range(1, 41), repeat=2):
        if cols * rows <= 40:
            plan = plan_tiles(S * cols, S * rows, max_tiles=cols * rows)
            assert (plan.cols, plan.rows) == (cols, rows)


@pytest.mark.parametrize(("min_tiles", "max_tiles"), [(0, 12), (3, 2), (1, 41), (-1, 1)])
def test_plan_tiles_rejects_invalid_tile_bounds(min_tiles: int, max_tiles: int) -> None:
    with pytest.raises(ValueError, match="min_tiles"):
        plan_tiles(100, 100, min_tiles=min_tiles, max_tiles=max_tiles)


@pytest.mark.parametrize(("width", "height", "max_tiles"),
                         [(1000, 700, 12), (1234, 987, 12), (2000, 500, 6), (300, 200, 12),
                          (57, 2900, 12), (448, 448, 12), (3000, 2000, 24)])
def test_tile_image_matches_transformers_pixels(width: int, height: int, max_tiles: int) -> None:
    image = photo_like(width, height, seed=width * height)
    expected = transformers_processor(max_tiles)(images=image, return_tensors="np")
    ours = normalize_tiles(tile_image(image, plan_tiles(width, height, max_tiles=max_tiles)))
    assert ours.shape == expected["pixel_values"].shape
    assert np.abs(ours - expected["pixel_values"]).max() <= PIXEL_TOLERANCE


def test_tile_image_crops_row_major_then_appends_thumbnail() -> None:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    canvas = Image.new("RGB", (3 * S, 2 * S))
    for index, color in enumerate(colors):
        row, col = divmod(index, 3)
        canvas.paste(color, (col * S, row * S, (col + 1) * S, (row + 1) * S))
    tiles = tile_image(canvas, TilePlan(3, 2, thumbnail=True))
    assert tiles.shape == (7, S, S, 3)
    assert tiles.dtype == np.uint8
    for tile, color in zip(tiles, colors, strict=False):
        assert tuple(tile[S // 2, S // 2]) == color
    thumbnail = np.asarray(canvas.resize((S, S), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(tiles[6], thumbnail)


def test_tile_image_rejects_non_rgb_image() -> None:
    with pytest.raises(ValueError, match="RGB"):
        tile_image(Image.new("RGBA", (10, 10)), TilePlan(1, 1, thumbnail=False))


def test_normalize_tiles_matches_torchvision_to_tensor_and_normalize() -> None:
    torch = pytest.importorskip("torch")
    tiles = np.random.default_rng(1).integers(0, 256, (2, S, S, 3), dtype=np.uint8)
    expected = torch.from_numpy(tiles).permute(0, 3, 1, 2).float().div(255)
    expected = (expected - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(
        IMAGENET_STD)[:, None, None]
    out = normalize_tiles(tiles)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected.numpy())


def test_normalize_tiles_rejects_wrong_layout() -> None:
    with pytest.raises(ValueError, match="uint8"):
        normalize_tiles(np.zeros((1, 3, S, S), dtype=np.uint8))


def test_image_to_pixel_values_decodes_plans_and_normalises() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (1792, 448), (255, 255, 255)).save(buffer, format="PNG")
    pixels = image_to_pixel_values(buffer.getvalue(), max_tiles=12)
    assert pixels.shape == (5, 3, S, S)
    assert pixels.dtype == np.float32
    white = (1 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    np.testing.assert_allclose(pixels[:, :, 10, 10], np.tile(white, (5, 1)), rtol=1e-6)


def jpeg_bytes(image: Image.Image, **options: object) -> bytes:
    """An image saved as a quality-92 JPEG."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92, **options)
    return buffer.getvalue()


def test_tile_image_bytes_exact_matches_transformers_on_decoded_jpeg() -> None:
    data = jpeg_bytes(photo_like(2400, 1500, seed=3))
    tiled = tile_image_bytes(data, exact=True)
    decoded = Image.open(io.BytesIO(data)).convert("RGB")
    expected = transformers_processor(12)(images=decoded, return_tensors="np")["pixel_values"]
    assert tiled.decoded_size == (2400, 1500)
    assert np.abs(normalize_tiles(tiled.tiles) - expected).max() <= PIXEL_TOLERANCE


def test_tile_image_bytes_fast_decodes_large_jpeg_scaled_but_not_below_canvas() -> None:
    image = photo_like(4000, 3000, seed=4)
    data = jpeg_bytes(image)
    fast = tile_image_bytes(data, exact=False)
    exact = tile_image_bytes(data, exact=True)
    assert fast.plan == exact.plan == plan_tiles(4000, 3000)
    assert (fast.width, fast.height) == (4000, 3000)
    # 1/2 scale is the largest DCT scale that stays at least the 1792x1344 canvas.
    assert fast.decoded_size == (2000, 1500)
    diff = np.abs(fast.tiles.astype(np.int16) - exact.tiles.astype(np.int16))
    # Measured on this noisy image: grid tiles 2.4 grey levels on average, thumbnail 0.4;
    # smoother photos differ less (README, performance).
    grid = fast.plan.cols * fast.plan.rows
    assert diff[:grid].mean() < 3.0 and diff[grid:].mean() < 1.0


def test_tile_image_bytes_keeps_small_jpeg_at_full_resolution() -> None:
    # 1000x700 is less than twice its 3x2 canvas (1344x896): no DCT scaling is possible.
    tiled = tile_image_bytes(jpeg_bytes(photo_like(1000, 700, seed=5)), exact=False)
    assert tiled.decoded_size == (1000, 700)


def test_tile_image_bytes_plans_rotated_photo_from_upright_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait (turned 90 degrees clockwise)
    data = jpeg_bytes(photo_like(4000, 1000, seed=6), exif=exif.tobytes())
    fast = tile_image_bytes(data, exact=False)
    assert (fast.width, fast.height) == (1000, 4000)
    assert fast.plan == plan_tiles(1000, 4000)
    assert fast.decoded_size[0] >= TILE_SIZE * fast.plan.cols
    assert fast.decoded_size[1] >= TILE_SIZE * fast.plan.rows
    assert fast.decoded_size[1] < 4000
    exact = tile_image_bytes(data, exact=True)
    assert np.abs(fast.tiles.astype(np.int16) - exact.tiles.astype(np.int16)).mean() < 3.0


def test_fast_tile_image_stays_within_a_grey_level_of_exact_on_same_image() -> None:
    image = photo_like(1500, 1000, seed=7)
    plan = plan_tiles(1500, 1000)
    diff = np.abs(tile_image(image, plan, exact=False).astype(np.int16)
                  - tile_image(image, plan).astype(np.int16))
    assert diff.mean() < 0.5 and diff.max() <= 16
