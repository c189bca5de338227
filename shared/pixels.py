"""InternVL pixel conventions: tile size and ImageNet normalisation of uint8 RGB tiles."""

import numpy as np
import numpy.typing as npt

TILE_SIZE = 448
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# One float32 value per (byte, channel), computed with the same float32 operations as the
# reference's ToTensor + Normalize, so a table lookup is bit-identical to it and faster than
# doing the arithmetic on every pixel.
_LUT: npt.NDArray[np.float32] = np.ascontiguousarray(
    (
        (np.arange(256, dtype=np.float32) / np.float32(255))[None, :]
        - np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None]
    )
    / np.asarray(IMAGENET_STD, dtype=np.float32)[:, None]
)


def normalize_tiles(tiles: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Turn uint8 RGB tiles (n, H, W, 3) into ImageNet-normalised float32 (n, 3, H, W)."""
    if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[3] != 3:
        raise ValueError(f"expected uint8 tiles of shape (n, H, W, 3), got {tiles.dtype} "
                         f"{tiles.shape}")
    n, height, width, _ = tiles.shape
    out = np.empty((n, 3, height, width), dtype=np.float32)
    for channel in range(3):
        out[:, channel] = _LUT[channel][tiles[..., channel]]
    return out
