"""A 12-megapixel JPEG photo to model-ready tiles: ours against the model card's pipeline.

Run: python -m benchmarks.preprocess_image [--repeat N]

Baselines, measured in the same run on the same file: InternVL's model-card `load_image`
(full decode, `dynamic_preprocess`, then torchvision's Resize + ToTensor + Normalize per tile,
emulated here with the same PIL and torch calls since torchvision is not installed), and a
plain full-size decode of the JPEG.
"""

import argparse
import io

import numpy as np
import torch
from PIL import Image

from benchmarks.timing import median_seconds, report
from scripts.sample_media import encode_image, sample_image
from services.preprocess_worker.tiling import tile_image, tile_image_bytes
from shared.pixels import IMAGENET_MEAN, IMAGENET_STD, TILE_SIZE, normalize_tiles
from shared.tile_plan import plan_tiles

WIDTH, HEIGHT = 4000, 3000


def photo_jpeg() -> bytes:
    """A 4000x3000 quality-90 JPEG with a phone photo's mix of smooth areas and fine texture."""
    image = sample_image(WIDTH, HEIGHT, seed=1)
    rng = np.random.default_rng(2)
    # Texture at a few pixels' scale (foliage, fabric), which is what makes photos costly.
    texture = rng.normal(0, 14, (HEIGHT // 3 + 1, WIDTH // 3 + 1, 1)).repeat(3, 0).repeat(3, 1)
    pixels = np.asarray(image).astype(np.float32) + texture[:HEIGHT, :WIDTH]
    return encode_image(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), "JPEG",
                        quality=90)


def model_card_pipeline(data: bytes, max_num: int = 12) -> torch.Tensor:
    """The model card's `load_image(image_file, input_size=448, max_num=12)`, step by step."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    # dynamic_preprocess: same grid rule, resize to the canvas, crop each tile, thumbnail.
    plan = plan_tiles(image.width, image.height, max_tiles=max_num)
    size = TILE_SIZE
    resized = image.resize((size * plan.cols, size * plan.rows), Image.Resampling.BICUBIC)
    tiles = [resized.crop((col * size, row * size, (col + 1) * size, (row + 1) * size))
             for row in range(plan.rows) for col in range(plan.cols)]
    if plan.thumbnail:
        tiles.append(image.resize((size, size), Image.Resampling.BICUBIC))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixel_values = []
    for tile in tiles:
        # T.Resize((448, 448), BICUBIC) on a PIL tile (a copy at this size), T.ToTensor(),
        # T.Normalize(mean, std) (not in place, so on a clone).
        tile = tile.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        tensor = torch.from_numpy(np.array(tile, np.uint8, copy=True))
        tensor = tensor.view(size, size, 3).permute(2, 0, 1).contiguous().float().div(255)
        pixel_values.append(tensor.clone().sub_(mean).div_(std))
    return torch.stack(pixel_values)


def full_decode(data: bytes) -> None:
    """Only decode the JPEG at full size, as any pipeline must at least start by doing."""
    Image.open(io.BytesIO(data)).load()


def main() -> None:
    """Generate the photo, time every variant and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    repeat = parser.parse_args().repeat
    data = photo_jpeg()
    plan = plan_tiles(WIDTH, HEIGHT)
    print(f"{WIDTH}x{HEIGHT} JPEG, {len(data) / 1e6:.1f} MB, grid {plan.cols}x{plan.rows} + "
          f"thumbnail = {plan.num_tiles} tiles; median of {repeat} runs; "
          f"torch threads {torch.get_num_threads()}")

    reference = median_seconds(lambda: model_card_pipeline(data), repeat=repeat)
    decode = median_seconds(lambda: full_decode(data), repeat=repeat)
    ours_u8 = median_seconds(lambda: tile_image_bytes(data, exact=False), repeat=repeat)
    ours_f32 = median_seconds(
        lambda: normalize_tiles(tile_image_bytes(data, exact=False).tiles), repeat=repeat)
    exact_u8 = median_seconds(lambda: tile_image_bytes(data, exact=True), repeat=repeat)
    report("model card pipeline (float32 tensor)", reference)
    report("full-size decode only", decode)
    report("ours, exact mode (uint8 tiles)", exact_u8, reference)
    report("ours, fast mode (uint8 tiles, what workers store)", ours_u8, reference)
    report("ours, fast mode + normalise (float32)", ours_f32, reference)
    print(f"fast uint8 tiles / full-size decode: {ours_u8 / decode:.2f}x the decode time; "
          f"with normalise: {ours_f32 / decode:.2f}x")

    exact = tile_image(Image.open(io.BytesIO(data)).convert("RGB"), plan).astype(np.int16)
    fast = tile_image_bytes(data, exact=False).tiles.astype(np.int16)
    diff = np.abs(fast - exact)
    psnr = 10 * np.log10(255**2 / float((diff.astype(np.float64) ** 2).mean()))
    grid = plan.cols * plan.rows
    print(f"fast vs exact pixels (uint8): grid tiles mean |diff| {diff[:grid].mean():.2f}, "
          f"thumbnail {diff[grid:].mean():.2f}, max {diff.max()}, PSNR {psnr:.1f} dB")


if __name__ == "__main__":
    main()
