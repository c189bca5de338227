"""A 20-page PDF at the default DPI: pages per second, and throughput of two processes vs one.

Run: python -m benchmarks.preprocess_pdf [--pages 20] [--copies 8] [--repeat 3]

Each page is rendered with PDFium at the request default (144 DPI) and tiled as the worker
tiles it (fast mode, default 12 tiles). The two-process figure prepares `--copies` copies of the
PDF with a pool of two processes, against the same work in one process, in the same run.
"""

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import numpy as np

from benchmarks.timing import median_seconds
from scripts.sample_media import sample_pdf
from services.preprocess_worker.pages import render_pages
from services.preprocess_worker.tiling import tile_image
from shared.schemas import MediaOptions
from shared.tile_plan import plan_tiles

DPI = MediaOptions().dpi


def prepare_pdf(data: bytes) -> int:
    """Render every page and tile it as the worker does; return how many tiles were made."""
    tiles = 0
    for _, page in render_pages(data, dpi=DPI):
        plan = plan_tiles(page.width, page.height)
        tiles += len(tile_image(page, plan, exact=False))
    return tiles


def throughput(data: bytes, copies: int, processes: int) -> float:
    """Seconds to prepare `copies` copies of the PDF with a pool of `processes` processes."""
    with ProcessPoolExecutor(max_workers=processes) as pool:
        list(pool.map(prepare_pdf, [data] * processes))  # start and warm every process
        start = time.perf_counter()
        list(pool.map(prepare_pdf, [data] * copies))
        return time.perf_counter() - start


def main() -> None:
    """Generate the PDF, time one process and two, print pages per second."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = sample_pdf(pages=args.pages)
    tiles = prepare_pdf(data)
    print(f"{args.pages}-page PDF (A4 pages with text and shapes), {len(data) / 1e3:.0f} kB, "
          f"{DPI} DPI, {tiles} tiles; median of {args.repeat} runs")
    render = median_seconds(partial(render_pages, data, dpi=DPI), repeat=args.repeat)
    whole = median_seconds(partial(prepare_pdf, data), repeat=args.repeat)
    print(f"render only:          {args.pages / render:7.1f} pages/s ({render * 1e3:.0f} ms)")
    print(f"render and tile:      {args.pages / whole:7.1f} pages/s ({whole * 1e3:.0f} ms)")
    pages = args.pages * args.copies
    one = float(np.median([throughput(data, args.copies, 1) for _ in range(args.repeat)]))
    two = float(np.median([throughput(data, args.copies, 2) for _ in range(args.repeat)]))
    print(f"1 process, {args.copies} PDFs:    {pages / one:7.1f} pages/s")
    print(f"2 processes, {args.copies} PDFs:  {pages / two:7.1f} pages/s "
          f"({one / two:.2f}x the throughput of one process)")


if __name__ == "__main__":
    main()
