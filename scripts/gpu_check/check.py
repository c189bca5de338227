"""GPU check: a TurboMind-shaped InternVL (random weights), our engine against LMDeploy's own paths.

Prints (a) greedy answers of our transformers engine and our LMDeploy engine on the same weights,
(b) our engine's throughput at 1, 8 and 32 requests in flight (worker threads calling
`generate`, as a threaded Celery pool does), (c) LMDeploy's pipeline called directly with the
same requests in one batch, and our overhead as a ratio, (d) requests per second for 12-megapixel
JPEGs through our tiling + engine versus `lmdeploy serve api_server` fed the same JPEGs. Every
part has a time budget and reports its own failure, so one failing part leaves the others.
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
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from scripts.build_tiny_model import SEED, build_config, build_tokenizer  # noqa: E402
from services.inference_worker.engine import EngineImage, EngineRequest, load_engine  # noqa: E402
from shared.schemas import GenerationParams  # noqa: E402

# LLM and vision shapes; head_dim 128 everywhere (TurboMind's and LMDeploy's fast kernels).
SIZES: dict[str, dict[str, int]] = {
    "small": {"hidden": 1024, "layers": 8, "heads": 8, "kv": 2, "inter": 2816,
              "v_hidden": 1024, "v_layers": 4, "v_heads": 8, "v_inter": 4096},
    # InternVL3-8B: Qwen2.5-7B (3584, 28 layers, 28/4 heads) + InternViT-300M; tiny vocabulary.
    "8b": {"hidden": 3584, "layers": 28, "heads": 28, "kv": 4, "inter": 18944,
           "v_hidden": 1024, "v_layers": 24, "v_heads": 16, "v_inter": 4096},
}
RESULTS: dict[str, Any] = {}


def log(message: str) -> None:
    """Print a progress line with the time since start."""
    print(f"[{time.perf_counter() - STARTED:6.1f}s] {message}", flush=True)


def build_model(out: Path, size: str, device: str) -> Path:
    """Write an InternVL with the chosen shapes and seeded random bf16 weights made on `device`."""
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

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
                generator.manual_seed(SEED + zlib.crc32(name.encode()))
                # Unit-scale embeddings and head: wide logit margins, so bf16 engines agree.
                std = 1.0 if ("embed_tokens" in name or "lm_head" in name) else (
                    0.02 if tensor.dim() < 2 else float(tensor[0].numel()) ** -0.5)
                tensor.copy_(torch.randn(tensor.shape, generator=generator, device=tensor.device,
                                         dtype=torch.float32) * std)
    model.generation_config.do_sample = False
    model.save_pretrained(out, max_shard_size="5GB")
    tokenizer.save_pretrained(out)
    try:  # LMDeploy's HF-native InternVL path reads the processor; it needs torchvision
        processor = InternVLProcessor(
            image_processor=GotOcr2ImageProcessor(crop_to_patches=True, max_patches=12,
                                                  size={"height": 448, "width": 448}),
            tokenizer=tokenizer, video_processor=InternVLVideoProcessor(), image_seq_length=256)
        processor.save_pretrained(out)
    except ImportError as error:
        log(f"no processor saved ({error.__class__.__name__}: torchvision missing?)")
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def one_tile_request(seed: int, tokens: int) -> EngineRequest:
    """A question about one random 448x448 tile that decodes exactly `tokens` tokens."""
    tiles = np.random.default_rng(seed).integers(0, 256, (1, 448, 448, 3), dtype=np.uint8)
    return EngineRequest(question=f"Describe image {seed}.",
                         images=[EngineImage(tiles=tiles, cols=1, rows=1, thumbnail=False)],
                         generation=GenerationParams(max_new_tokens=tokens,
                                                     min_new_tokens=tokens))


def correctness_requests() -> list[EngineRequest]:
    """A text-only request, a one-tile image and a 2x2 grid with thumbnail, greedy 32 tokens."""
    rng = np.random.default_rng(7)
    params = GenerationParams(max_new_tokens=32)
    grid = rng.integers(0, 256, (5, 448, 448, 3), dtype=np.uint8)
    return [EngineRequest(question="What is in the picture?", images=[], generation=params),
            EngineRequest(question="Describe the image.", generation=params, images=[
                EngineImage(tiles=grid[:1], cols=1, rows=1, thumbnail=False)]),
            EngineRequest(question="Count the cats.", generation=params, images=[
                EngineImage(tiles=grid, cols=2, rows=2, thumbnail=True)])]


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
    if elapsed > budget_s:
        log(f"{name} overran its budget: {elapsed:.0f} s")


def lmdeploy_options(cache_share: float) -> dict[str, Any]:
    """Our LMDeployEngine options for this check: the PyTorch backend (no TurboMind binary)."""
    return {"backend": "pytorch", "session_len": 8192, "cache_max_entry_count": cache_share}


def run_in_flight(call: Callable[[EngineRequest], Any], requests: list[EngineRequest],
                  in_flight: int) -> float:
    """Seconds to answer `requests` with `in_flight` threads each calling `call`."""
    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(call, requests))
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


def main() -> None:
    """Build the model, run parts (a) to (d), print the report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="8b")
    parser.add_argument("--model-dir", type=Path, default=REPO / ".models" / "gpu-check")
    parser.add_argument("--tokens", type=int, default=64, help="decoded per timed request")
    parser.add_argument("--photos", type=int, default=16)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    log(f"torch {torch.__version__}, device {device} "
        f"{torch.cuda.get_device_name() if device == 'cuda' else ''}")
    model_dir = build_model(args.model_dir, args.size, device)
    log(f"built {args.size} model in {model_dir}")
    requests = correctness_requests()
    state: dict[str, Any] = {}

    def correctness() -> None:
        reference = load_engine("transformers", model_dir, device=device)
        expected = [reference.generate(request) for request in requests]
        del reference
        gc.collect()
        torch.cuda.empty_cache()
        state["engine"] = load_engine("lmdeploy", model_dir, **lmdeploy_options(0.5))
        got = [state["engine"].generate(request) for request in requests]
        rows = []
        for want, have in zip(expected, got, strict=True):
            prefix = next((i for i, (a, b) in enumerate(zip(want.text, have.text, strict=False))
                           if a != b), min(len(want.text), len(have.text)))
            rows.append({"same": want.text == have.text, "common_prefix_chars": prefix,
                         "tokens": [want.completion_tokens, have.completion_tokens],
                         "prompt_tokens": [want.prompt_tokens, have.prompt_tokens]})
        RESULTS["a_correctness"] = rows

    def ours() -> None:
        engine = state.get("engine") or load_engine("lmdeploy", model_dir, **lmdeploy_options(0.5))
        state["engine"] = engine
        engine.generate(one_tile_request(0, 4))  # warm-up (kernels compile on first use)
        table = {}
        for in_flight in (1, 8, 32):
            batch = [one_tile_request(i, args.tokens) for i in range(max(2 * in_flight, 8))]
            seconds = run_in_flight(engine.generate, batch, in_flight)
            table[in_flight] = {"requests_per_s": len(batch) / seconds,
                                "tokens_per_s": len(batch) * args.tokens / seconds}
            log(f"ours, {in_flight} in flight: {table[in_flight]}")
        RESULTS["b_ours"] = table

    def direct() -> None:
        from lmdeploy import GenerationConfig, PytorchEngineConfig, VisionConfig, pipeline

        from services.inference_worker.engine_lmdeploy import (
            build_messages,
            generation_config_kwargs,
        )

        if "engine" in state:
            state.pop("engine").close()
            gc.collect()
            torch.cuda.empty_cache()
        pipe = pipeline(str(model_dir), backend_config=PytorchEngineConfig(
            session_len=8192, cache_max_entry_count=0.5), vision_config=VisionConfig())
        pipe([build_messages(one_tile_request(0, 4))])
        table = {}
        for in_flight in (1, 8, 32):
            batch = [one_tile_request(i, args.tokens) for i in range(max(2 * in_flight, 8))]
            prompts = [build_messages(request) for request in batch]
            config = GenerationConfig(**generation_config_kwargs(batch[0].generation))
            started = time.perf_counter()
            for start in range(0, len(prompts), in_flight):
                pipe(prompts[start:start + in_flight], gen_config=config)
            seconds = time.perf_counter() - started
            table[in_flight] = {"requests_per_s": len(batch) / seconds,
                                "tokens_per_s": len(batch) * args.tokens / seconds}
            log(f"direct, {in_flight} in flight: {table[in_flight]}")
        RESULTS["c_direct"] = table
        ours_table = RESULTS.get("b_ours", {})
        RESULTS["c_overhead_ratio"] = {n: table[n]["requests_per_s"]
                                       / ours_table[n]["requests_per_s"]
                                       for n in table if n in ours_table}
        pipe.close()
        gc.collect()
        torch.cuda.empty_cache()

    def photos() -> None:
        from services.preprocess_worker.tiling import tile_image_bytes

        jpegs = twelve_mp_jpegs(args.photos)
        engine: Any = load_engine("lmdeploy", model_dir, **lmdeploy_options(0.5))
        params = GenerationParams(max_new_tokens=16, min_new_tokens=16)

        def ours_one(data: bytes) -> None:
            tiled = tile_image_bytes(data, max_tiles=12, exact=False)
            engine.generate(EngineRequest(question="Describe the photo.", generation=params,
                                          images=[EngineImage(
                                              tiles=tiled.tiles, cols=tiled.plan.cols,
                                              rows=tiled.plan.rows,
                                              thumbnail=tiled.plan.thumbnail)]))

        ours_one(jpegs[0])
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(ours_one, jpegs))
        ours_rps = len(jpegs) / (time.perf_counter() - started)
        engine.close()
        gc.collect()
        torch.cuda.empty_cache()
        port = 23333
        server = subprocess.Popen([sys.executable, "-m", "lmdeploy", "serve", "api_server",
                                   str(model_dir), "--backend", "pytorch", "--server-port",
                                   str(port), "--session-len", "8192",
                                   "--cache-max-entry-count", "0.5"])
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180
            while True:
                try:
                    urllib.request.urlopen(f"{url}/v1/models", timeout=2).read()  # noqa: S310
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("api_server did not come up") from None
                    time.sleep(1)
            served = json.loads(urllib.request.urlopen(f"{url}/v1/models").read())  # noqa: S310
            model_name = served["data"][0]["id"]

            def server_one(data: bytes) -> None:
                image = "data:image/jpeg;base64," + base64.b64encode(data).decode()
                body = {"model": model_name, "max_tokens": 16, "min_tokens": 16,
                        "temperature": 0, "messages": [{"role": "user", "content": [
                            {"type": "text", "text": "Describe the photo."},
                            {"type": "image_url", "image_url": {"url": image}}]}]}
                request = urllib.request.Request(  # noqa: S310 (our own local server)
                    f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"})
                json.loads(urllib.request.urlopen(request, timeout=300).read())  # noqa: S310

            server_one(jpegs[0])
            started = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(server_one, jpegs))
            server_rps = len(jpegs) / (time.perf_counter() - started)
        finally:
            server.terminate()
            server.wait(timeout=30)
        RESULTS["d_12mp_photos_8_in_flight"] = {
            "ours_requests_per_s": ours_rps, "api_server_requests_per_s": server_rps,
            "ours_over_api_server": ours_rps / server_rps}

    part("a_correctness", 120, correctness)
    part("b_ours", 90, ours)
    part("c_direct", 90, direct)
    part("d_12mp_photos", 150, photos)
    print("\n===== REPORT =====")
    print(json.dumps({"size": args.size, "gpu": torch.cuda.get_device_name() if device == "cuda"
                      else None, **RESULTS}, indent=2, default=str))


STARTED = time.perf_counter()

if __name__ == "__main__":
    main()
