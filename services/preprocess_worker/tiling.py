"""InternVL dynamic-resolution tiling, reproducing the model's reference `dynamic_preprocess`."""

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, partial

import numpy as np
import numpy.typing as npt
from PIL import Image

from services.preprocess_worker.decode import (
    load_rgb,
    open_image,
    reduce_while_decoding,
    upright_size,
)
from shared.pixels import TILE_SIZE, normalize_tiles
from shared.tile_plan import TilePlan, canvas_size, plan_tiles

# Two resizes at once: the latency of one large image halves on an idle worker, and a busy
# one (a process per core) loses next to nothing.
_RESIZE_THREADS = 2


def tile_image(image: Image.Image, plan: TilePlan, *, exact: bool = True) -> npt.NDArray[np.uint8]:
    """Cut an RGB image into the plan's uint8 tiles (num_tiles, 448, 448, 3), row-major.

    `exact` gives the reference's pixels. Otherwise the halves of the canvas and of the
    thumbnail are resized on two threads (Pillow lets go of the GIL while resampling), which
    moves some pixels by a grey level or so.
    """
    if image.mode != "RGB":
        raise ValueError(f"tile_image needs an RGB image, got mode {image.mode}")
    size = TILE_SIZE
    width, height = canvas_size(plan)
    bicubic = Image.Resampling.BICUBIC
    tiles = np.empty((plan.num_tiles, size, size, 3), dtype=np.uint8)
    if exact:
        canvas = np.asarray(image.resize((width, height), bicubic))
        if plan.thumbnail:
            tiles[-1] = np.asarray(image.resize((size, size), bicubic))
    else:
        # Four halves on two threads: each thread gets the same share of the work.
        canvas = np.empty((height, width, 3), dtype=np.uint8)
        jobs = _halves(image, canvas)
        if plan.thumbnail:
            jobs += _halves(image, tiles[-1])
        for future in [_resize_pool(os.getpid()).submit(job) for job in jobs]:
            future.result()
    grid = canvas.reshape(plan.rows, size, plan.cols, size, 3).swapaxes(1, 2)
    tiles[: plan.cols * plan.rows] = grid.reshape(-1, size, size, 3)
    return tiles


def _halves(image: Image.Image, out: npt.NDArray[np.uint8]) -> list[Callable[[], None]]:
    """Two jobs that bicubic-resize the image into the top and bottom halves of `out`."""
    height, width = out.shape[:2]
    scale = image.height / height

    def band(top: int, bottom: int) -> None:
        box = (0.0, top * scale, float(image.width), bottom * scale)
        out[top:bottom] = np.asarray(
            image.resize((width, bottom - top), Image.Resampling.BICUBIC, box=box))

    return [partial(band, 0, height // 2), partial(band, height // 2, height)]


@cache
def _resize_pool(pid: int) -> ThreadPoolExecutor:
    """Threads for resizing, one pool per process id: a pool does not survive a fork."""
    return ThreadPoolExecutor(max_workers=_RESIZE_THREADS, thread_name_prefix="resize")


@dataclass(frozen=True)
class TiledImage:
    """An uploaded image as model-ready uint8 tiles, with the plan and sizes that made them."""

    tiles: npt.NDArray[np.uint8]  # (plan.num_tiles, 448, 448, 3) RGB
    plan: TilePlan
    width: int  # of the upright image, as uploaded
    height: int
    decoded_size: tuple[int, int]  # what was decoded: smaller than the upload when DCT-scaled


def tile_image_bytes(
    data: bytes,
    *,
    min_tiles: int = 1,
    max_tiles: int = 12,
    exact: bool = True,
    max_pixels: int = 80_000_000,
    max_aspect: float = 200.0,
) -> TiledImage:
    """Decode image bytes and cut them into tiles, planning the grid from the header alone.

    `exact` reproduces the reference's pixels. Otherwise a JPEG at least twice the canvas on
    both axes is decoded at 1/2, 1/4 or 1/8 scale (never below the canvas) and the resizes run
    on two threads: a fraction of the time on a phone photo, at a small pixel cost (README,
    performance). The grid is the same either way, since it comes from the header.
    """
    image = open_image(data, max_pixels=max_pixels, max_aspect=max_aspect)
    width, height = upright_size(image)
    plan = plan_tiles(width, height, min_tiles=min_tiles, max_tiles=max_tiles)
    if not exact:
        reduce_while_decoding(image, canvas_size(plan))
    rgb = load_rgb(image)
    return TiledImage(tiles=tile_image(rgb, plan, exact=exact), plan=plan, width=width,
                      height=height, decoded_size=rgb.size)


def image_to_pixel_values(
    data: bytes, *, min_tiles: int = 1, max_tiles: int = 12, exact: bool = True
) -> npt.NDArray[np.float32]:
    """Decode image bytes into the float32 (n, 3, 448, 448) pixel values the model sees."""
    tiled = tile_image_bytes(data, min_tiles=min_tiles, max_tiles=max_tiles, exact=exact)
    return normalize_tiles(tiled.tiles)
