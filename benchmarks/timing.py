"""Timing helpers shared by the benchmarks: medians of repeated runs, printed as a ratio."""

import statistics
import time
from collections.abc import Callable


def median_seconds(work: Callable[[], object], *, repeat: int, warmup: int = 1) -> float:
    """The median wall time of `repeat` runs of work, after `warmup` untimed runs."""
    for _ in range(warmup):
        work()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(label: str, seconds: float, baseline: float | None = None) -> None:
    """Print one timing line, with how many times faster than a baseline it is."""
    ratio = "" if baseline is None else f"  ({baseline / seconds:.2f}x faster than baseline)"
    print(f"{label:<52} {seconds * 1000:9.1f} ms{ratio}")
