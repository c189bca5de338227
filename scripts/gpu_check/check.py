"""GPU check: an InternVL with real shapes (random weights), our engines against LMDeploy's paths.

Parts, each with a time budget, reporting its own failure so the others still run:
(a) greedy answers of our transformers engine and our LMDeploy engine on the same weights;
(b) our LMDeploy engine at 1, 8 and 32 requests in flight (worker threads calling `generate`,
    as the inference worker's thread pool does);
(c) LMDeploy's pipeline called directly with the same requests, and our overhead as a ratio;
(d) 12-megapixel JPEGs through our tiling and engine (in process) against `lmdeploy serve
    api_server` fed the same JPEGs, both decoding exactly the same number of tokens.
Each engine is closed and its GPU memory released before the next one starts. The report ends
with one table (markdown) and the raw figures (JSON).
"""

from __future__ import annotations

import argparse
import base64
import gc
import io
import json
import subprocess
import sys
import time
import traceback
import urllib.request
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from scripts.build_tiny_model import (  # noqa: E402
    build_config,
    build_processor,
    build_tokenizer,
)
from services.inference_worker.engine import (  # noqa: E402
    Engine,
    EngineImage,
    EngineRequest,
    load_engine,
)
from shared.schemas import GenerationParams  # noqa: E402

# LLM and vision shapes; head_dim 128 everywhere (TurboMind's and LMDeploy's fast kernels).
SIZES: dict[str, dict[str, int]] = {
    "small": {"hidden": 1024, "layers": 8, "heads": 8, "kv": 2, "inter": 2816,
              "v_hidden": 1024, "v_layers": 4, "v_heads": 8, "v_inter": 4096},
    # InternVL3-2B: Qwen2.5-1.5B (1536, 28 layers, 12/2 heads) + InternViT-300M; 1.8 B
    # parameters, 3.6 GB in bf16, so building and loading it four times fits the budget.
    "2b": {"hidden": 1536, "layers": 28, "heads": 12, "kv": 2, "inter": 8960,
           "v_hidden": 1024, "v_layers": 24, "v_heads": 16, "v_inter": 4096},
    # InternVL3-8B: Qwen2.5-7B + InternViT-300M: 16 GB of weights, too slow for 8 minutes.
    "8b": {"hidden": 3584, "layers": 28, "heads": 28, "kv": 4, "inter": 18944,
           "v_hidden": 1024, "v_layers": 24, "v_heads": 16, "v_inter": 4096},
}
RESULTS: dict[str, Any] = {}
STARTED = time.perf_counter()
Item = TypeVar("Item")


def log(message: str) -> None:
    """Print a progress line with the time since start."""
    print(f"[{time.perf_counter() - STARTED:6.1f}s] {message}", flush=True)


def build_model(out: Path, size: str, device: str) -> Path:
    """Write an InternVL with the chosen shapes, seeded random bf16 weights made on `device`,
    and the same tokenizer and processor (ImageNet mean/std) as the tiny model."""
    from transformers import InternVLForConditionalGeneration

    shape = SIZES[size]
    tokenizer = build_tokenizer()
    config = build_config(tokenizer)
    text: Any = config.text_config
    vision: Any = config.vision_config
    text.hidden_size, text.num_hidden_layers = shape["hidden"], shape["layers"]
    text.num_attention_heads, text.num_key_value_heads = shape["heads"], shape["kv"]
    text.intermediate_size, text.head_dim = shape["inter"], shape["hidden"] // shape["heads"]
    text.layer_types = ["full_attention"] * shape["layers"]
    text.max_window_layers = shape["layers"]
    vision.hidden_size, vision.num_hidden_layers = shape["v_hidden"], shape["v_layers"]
    vision.num_attention_heads, vision.intermediate_size = shape["v_heads"], shape["v_inter"]
    config.projector_hidden_act = "gelu"
    with torch.device(device):
        model = InternVLForConditionalGeneration(config).to(dtype=torch.bfloat16)  # type: ignore[call-arg]
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("bias"):
                tensor.zero_()
            elif "norm" in name or "lambda_" in name:
                tensor.fill_(1.0 if "norm" in name else 0.1)
            else:
                generator = torch.Generator(device=tensor.device)
                generator.manual_seed(zlib.crc32(name.encode()))
                # Unit-scale embeddings and head: wide logit margins, so bf16 engines agree.
                std = 1.0 if ("embed_tokens" in name or "lm_head" in name) else (
                    0.02 if tensor.dim() < 2 else float(tensor[0].numel()) ** -0.5)
                tensor.copy_(torch.randn(tensor.shape, generator=generator, device=tensor.device,
                                         dtype=torch.float32) * std)
    model.generation_config.do_sample = False
    model.save_pretrained(out, max_shard_size="5GB")
    build_processor(tokenizer).save_pretrained(out)  # LMDeploy's HF-native path needs it
    del model
    free_gpu()
    return out


def free_gpu() -> None:
    """Give back what a closed engine held."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def one_tile_request(seed: int, tokens: int) -> EngineRequest:
    """A question about one random 448x448 tile that decodes exactly `tokens` tokens."""
    tiles = np.random.default_rng(seed).integers(0, 256, (1, 448, 448, 3), dtype=np.uint8)
    return EngineRequest(question=f"Describe image {seed}.",
                         images=[EngineImage(tiles=tiles, cols=1, rows=1, thumbnail=False)],
                         generation=GenerationParams(max_new_tokens=tokens,
                                                     min_new_tokens=tokens))


def correctness_requests() -> list[EngineRequest]:
    """A text-only request, a one-tile image and a 2x1 grid with thumbnail, greedy 32 tokens."""
    from PIL import Image

    from services.preprocess_worker.tiling import tile_image
    from shared.tile_plan import plan_tiles

    params = GenerationParams(max_new_tokens=32)
    yy, xx = np.mgrid[0:700, 0:1300]
    photo = Image.fromarray(np.stack([(xx % 256), (yy % 256), ((xx + yy) % 256)],
                                     axis=-1).astype(np.uint8))
    plan = plan_tiles(photo.width, photo.height, max_tiles=2)
    grid = EngineImage(tiles=tile_image(photo, plan), cols=plan.cols, rows=plan.rows,
                       thumbnail=plan.thumbnail)
    tile = np.random.default_rng(7).integers(0, 256, (1, 448, 448, 3), dtype=np.uint8)
    return [EngineRequest(question="What is in the picture?", images=[], generation=params),
            EngineRequest(question="Describe the image.", generation=params, images=[
                EngineImage(tiles=tile, cols=1, rows=1, thumbnail=False)]),
            EngineRequest(question="Count the cats.", generation=params, images=[grid])]


def part(name: str, budget_s: float, run: Callable[[], None]) -> None:
    """Run one part of the check, recording failure or overrun instead of stopping."""
    started = time.perf_counter()
    log(f"== {name} (budget {budget_s:.0f} s)")
    try:
        run()
    except Exception as error:  # the report must go on to the next part
        traceback.print_exc()
        RESULTS[name] = {"error": f"{type(error).__name__}: {error}"}
    elapsed = time.perf_counter() - started
    log(f"{name} took {elapsed:.0f} s" + (" (over budget)" if elapsed > budget_s else ""))


def lmdeploy_options() -> dict[str, Any]:
    """Our LMDeployEngine options for this check: the PyTorch backend (no TurboMind binary)."""
    return {"backend": "pytorch", "session_len": 8192, "cache_max_entry_count": 0.5}


def run_in_flight(call: Callable[[Item], Any], items: list[Item], in_flight: int) -> float:
    """Seconds to run `call` on every item with `in_flight` threads."""
    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(call, items))
    return time.perf_counter() - started


def twelve_mp_jpegs(count: int) -> list[bytes]:
    """Synthetic 4032x3024 JPEGs (gradients plus noise, so they compress like photos)."""
    from PIL import Image

    rng = np.random.default_rng(12)
    yy, xx = np.mgrid[0:3024, 0:4032]
    photos = []
    for index in range(count):
        base = ((xx * (index + 1) + yy * 2) % 256).astype(np.uint8)
        pixels = np.stack([base, base[::-1], np.roll(base, 500 * index, axis=1)], axis=-1)
        pixels = np.clip(pixels + rng.integers(-12, 12, pixels.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def wait_for_server(url: str, server: subprocess.Popen[bytes], timeout_s: float) -> str:
    """The served model's name once `lmdeploy serve api_server` answers."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as response:  # noqa: S310
                return str(json.loads(response.read())["data"][0]["id"])
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("api_server did not come up") from None
            time.sleep(1)


def report_table() -> str:
    """The figures as one markdown table."""
    rows = ["| part | figure | value |", "|---|---|---|"]
    correctness = RESULTS.get("a_correctness")
    if isinstance(correctness, list):
        same = sum(row["same"] for row in correctness)
        rows.append(f"| (a) | greedy answers equal to the transformers engine | "
                    f"{same}/{len(correctness)} |")
    for key, label in (("b_ours", "ours"), ("c_direct", "LMDeploy pipeline")):
        table = RESULTS.get(key)
        if isinstance(table, dict) and "error" not in table:
            for in_flight, figures in table.items():
                rows.append(f"| ({key[0]}) | {label}, {in_flight} in flight, requests/s | "
                            f"{figures['requests_per_s']:.2f} |")
    for in_flight, ratio in RESULTS.get("c_ours_over_direct", {}).items():
        rows.append(f"| (c) | ours / LMDeploy pipeline, {in_flight} in flight | {ratio:.2f} |")
    photos = RESULTS.get("d_12mp_photos")
    if isinstance(photos, dict) and "error" not in photos:
        rows.append(f"| (d) | 12 MP photos/s, ours (tiling + engine) | "
                    f"{photos['ours_requests_per_s']:.2f} |")
        rows.append(f"| (d) | 12 MP photos/s, lmdeploy serve api_server | "
                    f"{photos['api_server_requests_per_s']:.2f} |")
        rows.append(f"| (d) | ours / api_server | {photos['ours_over_api_server']:.2f} |")
    failed = [name for name, value in RESULTS.items()
              if isinstance(value, dict) and "error" in value]
    rows += [f"| {name} | failed | {RESULTS[name]['error'][:80]} |" for name in failed]
    return "\n".join(rows)


def main() -> None:
    """Build the model, run parts (a) to (d), print the report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="2b")
    parser.add_argument("--model-dir", type=Path, default=REPO / ".models" / "gpu-check")
    parser.add_argument("--tokens", type=int, default=64, help="decoded per timed request")
    parser.add_argument("--photos", type=int, default=16)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    log(f"torch {torch.__version__}, device {device} {gpu or ''}")
    model_dir = build_model(args.model_dir, args.size, device)
    log(f"built the {args.size} model in {model_dir}")
    requests = correctness_requests()
    state: dict[str, Engine] = {}

    def close_ours() -> None:
        if "engine" in state:
            state.pop("engine").close()
            free_gpu()

    def ours_engine() -> Engine:
        if "engine" not in state:
            state["engine"] = load_engine("lmdeploy", model_dir, **lmdeploy_options())
        return state["engine"]

    def correctness() -> None:
        reference = load_engine("transformers", model_dir, device=device)
        expected = [reference.generate(request) for request in requests]
        reference.close()
        del reference
        free_gpu()
        got = [ours_engine().generate(request) for request in requests]
        rows = []
        for want, have in zip(expected, got, strict=True):
            prefix = next((i for i, (a, b) in enumerate(zip(want.text, have.text, strict=False))
                           if a != b), min(len(want.text), len(have.text)))
            rows.append({"same": want.text == have.text, "common_prefix_chars": prefix,
                         "tokens": [want.completion_tokens, have.completion_tokens],
                         "prompt_tokens": [want.prompt_tokens, have.prompt_tokens]})
        RESULTS["a_correctness"] = rows

    def ours() -> None:
        engine = ours_engine()
        engine.generate(one_tile_request(0, 4))  # warm-up (kernels compile on first use)
        table = {}
        for in_flight in (1, 8, 32):
            batch = [one_tile_request(i, args.tokens) for i in range(max(2 * in_flight, 8))]
            seconds = run_in_flight(engine.generate, batch, in_flight)
            table[in_flight] = {"requests_per_s": len(batch) / seconds,
                                "tokens_per_s": len(batch) * args.tokens / seconds}
            log(f"ours, {in_flight} in flight: {table[in_flight]}")
        RESULTS["b_ours"] = table
        close_ours()

    def direct() -> None:
        from lmdeploy import GenerationConfig, PytorchEngineConfig, VisionConfig, pipeline

        from services.inference_worker.engine_lmdeploy import (
            build_messages,
            generation_config_kwargs,
        )

        close_ours()
        pipe = pipeline(str(model_dir), backend_config=PytorchEngineConfig(
            session_len=8192, cache_max_entry_count=0.5), vision_config=VisionConfig(),
            trust_remote_code=True)
        try:
            pipe([build_messages(one_tile_request(0, 4), None)])
            table = {}
            for in_flight in (1, 8, 32):
                batch = [one_tile_request(i, args.tokens) for i in range(max(2 * in_flight, 8))]
                prompts = [build_messages(request, None) for request in batch]
                config = GenerationConfig(**generation_config_kwargs(batch[0].generation))
                started = time.perf_counter()
                for start in range(0, len(prompts), in_flight):
                    pipe(prompts[start:start + in_flight], gen_config=config)
                seconds = time.perf_counter() - started
                table[in_flight] = {"requests_per_s": len(batch) / seconds,
                                    "tokens_per_s": len(batch) * args.tokens / seconds}
                log(f"direct, {in_flight} in flight: {table[in_flight]}")
        finally:
            pipe.close()
            del pipe
            free_gpu()
        RESULTS["c_direct"] = table
        ours_table = RESULTS.get("b_ours", {})
        RESULTS["c_ours_over_direct"] = {n: ours_table[n]["requests_per_s"]
                                         / table[n]["requests_per_s"]
                                         for n in table if n in ours_table}

    def photos() -> None:
        from services.preprocess_worker.tiling import tile_image_bytes

        jpegs = twelve_mp_jpegs(args.photos)
        engine = ours_engine()
        params = GenerationParams(max_new_tokens=16, min_new_tokens=16)

        def ours_one(data: bytes) -> None:
            tiled = tile_image_bytes(data, max_tiles=12, exact=False)
            engine.generate(EngineRequest(question="Describe the photo.", generation=params,
                                          images=[EngineImage(
                                              tiles=tiled.tiles, cols=tiled.plan.cols,
                                              rows=tiled.plan.rows,
                                              thumbnail=tiled.plan.thumbnail)]))

        ours_one(jpegs[0])
        ours_rps = len(jpegs) / run_in_flight(ours_one, jpegs, 8)
        close_ours()
        port = 23333
        server = subprocess.Popen([sys.executable, "-m", "lmdeploy", "serve", "api_server",
                                   str(model_dir), "--backend", "pytorch", "--server-port",
                                   str(port), "--session-len", "8192",
                                   "--cache-max-entry-count", "0.5"])
        try:
            url = f"http://127.0.0.1:{port}"
            model_name = wait_for_server(url, server, timeout_s=180)

            def server_one(data: bytes) -> None:
                image = "data:image/jpeg;base64," + base64.b64encode(data).decode()
                # min_new_tokens: the api_server's own field (it ignores OpenAI's min_tokens).
                body = {"model": model_name, "max_tokens": 16, "min_new_tokens": 16,
                        "temperature": 0, "messages": [{"role": "user", "content": [
                            {"type": "image_url", "image_url": {"url": image}},
                            {"type": "text", "text": "Describe the photo."}]}]}
                request = urllib.request.Request(  # noqa: S310 (our own local server)
                    f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310
                    usage = json.loads(response.read())["usage"]
                if usage["completion_tokens"] != 16:
                    raise RuntimeError(f"api_server decoded {usage['completion_tokens']} tokens")

            server_one(jpegs[0])
            server_rps = len(jpegs) / run_in_flight(server_one, jpegs, 8)
        finally:
            server.terminate()
            server.wait(timeout=30)
        RESULTS["d_12mp_photos"] = {
            "ours_requests_per_s": ours_rps, "api_server_requests_per_s": server_rps,
            "ours_over_api_server": ours_rps / server_rps}

    part("a_correctness", 120, correctness)
    part("b_ours", 90, ours)
    part("c_direct", 100, direct)
    part("d_12mp_photos", 150, photos)
    print("\n===== REPORT =====")
    print(f"{args.size} model, {gpu}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}, {args.tokens} tokens per timed request\n")
    print(report_table())
    print(json.dumps({"size": args.size, "gpu": gpu, **RESULTS}, indent=2, default=str))


if __name__ == "__main__":
    main()
