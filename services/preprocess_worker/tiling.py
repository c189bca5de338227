"""InternVL dynamic-resolution tiling, reproducing the model's reference `dynamic_preprocess`."""

from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt
from PIL import Image

from services.preprocess_worker.decode import decode_image
from shared.pixels import TILE_SIZE, normalize_tiles

TOKENS_PER_TILE = 256
MAX_TILES_LIMIT = 40


@dataclass(frozen=True)
class TilePlan:
    """A grid of `cols` x `rows` tiles, plus a whole-image thumbnail tile when `thumbnail`."""

    cols: int
    rows: int
    thumbnail: bool

    @property
    def num_tiles(self) -> int:
        """How many 448x448 tiles the model sees for this image."""
        return self.cols * self.rows + int(self.thumbnail)


def plan_tiles(width: int, height: int, *, min_tiles: int = 1, max_tiles: int = 12) -> TilePlan:
    """Choose the grid the reference code chooses for a `width` x `height` image."""
    if not 1 <= min_tiles <= max_tiles <= MAX_TILES_LIMIT:
        raise ValueError(f"need 1 <= min_tiles <= max_tiles <= {MAX_TILES_LIMIT}, got "
                         f"min_tiles={min_tiles}, max_tiles={max_tiles}")
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    aspect = width / height
    area = width * height
    best_diff = float("inf")
    best = (1, 1)
    for cols, rows in _candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best_diff = diff
            best = (cols, rows)
        elif diff == best_diff and area > 0.5 * TILE_SIZE * TILE_SIZE * cols * rows:
            best = (cols, rows)
    cols, rows = best
    return TilePlan(cols=cols, rows=rows, thumbnail=cols * rows > 1)


@cache
def _candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """All grids in the reference's order.

    Built exactly as the reference builds it (a set of tuples, then a stable sort by tile count),
    because within one tile count the set's iteration order decides exact ties. With
    min_tiles > 1 that order can pick a different grid than a plain (cols, rows) loop would.
    """
    grids = set(
        (i, j)
        for n in range(min_tiles, max_tiles + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_tiles <= i * j <= max_tiles
    )
    return tuple(sorted(grids, key=lambda grid: grid[0] * grid[1]))


def tile_image(image: Image.Image, plan: TilePlan) -> npt.NDArray[np.uint8]:
    """Cut an RGB image into the plan's uint8 tiles (num_tiles, 448, 448, 3), row-major."""
    if image.mode != "RGB":
        raise ValueError(f"tile_image needs an RGB image, got mode {image.mode}")
    size = TILE_SIZE
    canvas = image.resize((size * plan.cols, size * plan.rows), Image.Resampling.BICUBIC)
    tiles = np.empty((plan.num_tiles, size, size, 3), dtype=np.uint8)
    grid = np.asarray(canvas).reshape(plan.rows, size, plan.cols, size, 3).swapaxes(1, 2)
    tiles[: plan.cols * plan.rows] = grid.reshape(-1, size, size, 3)
    if plan.thumbnail:
        tiles[-1] = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC))
    return tiles


def image_to_pixel_values(
    data: bytes, *, min_tiles: int = 1, max_tiles: int = 12
) -> npt.NDArray[np.float32]:
    """Decode image bytes into the float32 (n, 3, 448, 448) pixel values the model sees."""
    image = decode_image(data)
    plan = plan_tiles(image.width, image.height, min_tiles=min_tiles, max_tiles=max_tiles)
    return normalize_tiles(tile_image(image, plan))
