"""Jobs per second of one inference replica on the CPU: 1 job in flight versus N.

Runs the transformers engine on the tiny InternVL exactly as a worker does: N worker threads
each block on `engine.generate`, and the engine batches what is in flight. Both settings run
the same jobs in the same process, so the ratio is what keeping N jobs in flight buys.

    python -m benchmarks.inference_throughput [--jobs 48] [--in-flight 8] [--tokens 32]
"""

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from scripts.build_tiny_model import ensure_tiny_model
from services.inference_worker.engine import EngineImage, EngineRequest
from services.inference_worker.engine_transformers import TransformersEngine
from shared.schemas import GenerationParams

MODEL_DIR = Path(__file__).resolve().parent.parent / ".models" / "tiny-internvl"


def requests(count: int, tokens: int) -> list[EngineRequest]:
    """count one-tile jobs that each generate exactly `tokens` tokens."""
    rng = np.random.default_rng(0)
    generation = GenerationParams(max_new_tokens=tokens, min_new_tokens=tokens)
    return [EngineRequest(question=f"Describe picture {k}.", generation=generation,
                          images=[EngineImage(rng.integers(0, 256, (1, 448, 448, 3), np.uint8),
                                              cols=1, rows=1, thumbnail=False)])
            for k in range(count)]


def jobs_per_second(engine: TransformersEngine, jobs: list[EngineRequest], in_flight: int) -> float:
    """Throughput with in_flight worker threads feeding the engine."""
    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(engine.generate, jobs))
    return len(jobs) / (time.perf_counter() - started)


def main() -> None:
    """Measure both settings a few times and print medians and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=48)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    engine = TransformersEngine(ensure_tiny_model(MODEL_DIR), max_batch_size=args.in_flight)
    jobs = requests(args.jobs, args.tokens)
    engine.generate(jobs[0])  # warm-up: first-call allocations are not throughput
    results = {n: statistics.median(jobs_per_second(engine, jobs, n) for _ in range(args.repeats))
               for n in (1, args.in_flight)}
    print(f"tiny InternVL on CPU, {args.jobs} jobs of 1 tile and {args.tokens} tokens each")
    for n, rate in results.items():
        print(f"  {n:>3} in flight: {rate:6.1f} jobs/s")
    print(f"  ratio {args.in_flight} vs 1 in flight: {results[args.in_flight] / results[1]:.2f}x")


if __name__ == "__main__":
    main()
