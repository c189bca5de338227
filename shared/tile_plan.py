"""InternVL's grid choice: which cols x rows of 448 px tiles (plus thumbnail) an image gets.

Pure and shared: the preprocessing workers plan with it, and the inference side uses it to
know what an engine's own tiling will make of an image it is handed.
"""

from dataclasses import dataclass
from functools import cache

from shared.pixels import TILE_SIZE

# Visual tokens per tile of every InternVL since 1.5: (448 / 14)^2 patches, pixel-shuffled 0.5.
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


@dataclass(frozen=True)
class TileBounds:
    """The grid sizes (tiles before the thumbnail) a plan may choose between."""

    min_tiles: int
    max_tiles: int

    def within(self, other: "TileBounds") -> "TileBounds":
        """These bounds narrowed to fit inside `other`, never crossing (min <= max)."""
        high = max(other.min_tiles, min(self.max_tiles, other.max_tiles))
        return TileBounds(min(high, max(self.min_tiles, other.min_tiles)), high)


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


def canvas_size(plan: TilePlan) -> tuple[int, int]:
    """The (width, height) the whole image is resized to before it is cut into tiles."""
    return TILE_SIZE * plan.cols, TILE_SIZE * plan.rows
