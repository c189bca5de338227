"""The GPU engine: an LMDeploy pipeline (TurboMind where it supports the model, else PyTorch).

lmdeploy is imported only inside `LMDeployEngine`, so the pure mapping functions here (generation
settings, image canvases and messages, backend choice, error classification) import and test
without it.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from services.inference_worker.engine import (
    TILE_SIZE,
    EngineImage,
    EngineOutput,
    EngineRequest,
    FinishReason,
    OnText,
    tokens_per_tile,
)
from shared.errors import ErrorCode, TesseraError
from shared.schemas import GenerationParams

if TYPE_CHECKING:
    from PIL.Image import Image

Backend = Literal["turbomind", "pytorch"]

# Lower-cased fragments of LMDeploy error texts ("internal error happened, status code
# ResponseType.INPUT_LENGTH_ERROR", CUDA's "out of memory", ...) and the code each one means.
_OVERFLOW_MARKERS = ("input_length_error", "session_len", "session length", "context length",
                     "exceed", "too long")
_OOM_MARKERS = ("out of memory", "outofmemory", "out_of_memory", "oom")
# Every other finish_reason ("error", "abort", None) is a failure.
_FINISHED: dict[str | None, FinishReason] = {"stop": "stop", "length": "length"}


class ResponseLike(Protocol):
    """The fields of `lmdeploy.Response` this module reads."""

    text: str
    input_token_len: int
    generate_token_len: int
    finish_reason: str | None


def generation_config_kwargs(params: GenerationParams,
                             json_schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments for `lmdeploy.GenerationConfig` that decode as `params` asks, guided
    to JSON matching json_schema when one is given."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": params.max_new_tokens,
        "min_new_tokens": params.min_new_tokens,
        "random_seed": params.seed,
        "skip_special_tokens": True,
    }
    if json_schema is not None:
        kwargs["response_format"] = {"type": "json_schema",
                                     "json_schema": {"name": "job_output", "schema": json_schema}}
    if not params.greedy:
        # top_k=0 turns LMDeploy's default top-k of 50 off: our API offers temperature and top_p.
        kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p,
                      top_k=0, repetition_penalty=params.repetition_penalty)
    elif params.repetition_penalty != 1.0:
        # With do_sample=False LMDeploy drops the penalty; sampling from the top 1 token is
        # greedy decoding that still applies it.
        kwargs.update(do_sample=True, top_k=1, temperature=1.0,
                      repetition_penalty=params.repetition_penalty)
    else:
        kwargs.update(do_sample=False)
    return kwargs


def grid_canvas(image: EngineImage) -> Image:
    """The image's grid tiles (thumbnail dropped) reassembled into one (cols·448, rows·448) RGB."""
    from PIL import Image as PILImage

    grid = image.tiles[: image.cols * image.rows]
    canvas = (grid.reshape(image.rows, image.cols, TILE_SIZE, TILE_SIZE, 3)
              .transpose(0, 2, 1, 3, 4)
              .reshape(image.rows * TILE_SIZE, image.cols * TILE_SIZE, 3))
    return PILImage.fromarray(np.ascontiguousarray(canvas))


def build_messages(request: EngineRequest) -> list[dict[str, Any]]:
    """The conversation as OpenAI-style messages with PIL images, in InternVL's layout.

    LMDeploy writes each image part as `<img>…</img>\\n` and joins the parts, so a text part
    `"{label}: "` before each labelled image reproduces `Image-1: <image>\\n…{question}`. Each
    canvas carries `max_dynamic_patch = cols·rows`: LMDeploy's own tiling of a pre-sized canvas
    then reproduces the grid (and makes its own thumbnail). Only the maximum can be set per
    image (the minimum is the checkpoint's), and HF-native checkpoints ignore it (DESIGN §4).
    """
    messages: list[dict[str, Any]] = []
    for turn in request.history:
        messages.append({"role": "user", "content": _user_content(turn.question, turn.images)})
        messages.append({"role": "assistant", "content": turn.answer})
    messages.append({"role": "user", "content": _user_content(request.question, request.images)})
    return messages


def _user_content(question: str, images: list[EngineImage]) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    for image in images:
        if image.label:
            content.append({"type": "text", "text": f"{image.label}: "})
        content.append({"type": "image_data", "image_data": {
            "data": grid_canvas(image), "max_dynamic_patch": image.cols * image.rows}})
    content.append({"type": "text", "text": question})
    return content


def visual_tokens(request: EngineRequest, tokens_per_tile: int) -> int:
    """Prompt tokens the images alone take: their tiles plus `<img>`/`</img>` per image."""
    return sum(tokens_per_tile * image.num_tiles + 2 for image in request.all_images)


def model_tokens_per_tile(model_path: Path) -> int:
    """Visual tokens per tile from a checkpoint's config.json (original or HF-native InternVL)."""
    config = json.loads((model_path / "config.json").read_text())
    vision = config["vision_config"]
    image_size = config.get("force_image_size") or vision["image_size"]
    patch_size = vision["patch_size"]
    return tokens_per_tile(image_size, patch_size, config["downsample_ratio"])


def choose_backend(requested: Literal["turbomind", "pytorch", "auto"],
                   turbomind_supported: bool) -> Backend:
    """TurboMind when asked for or available, else PyTorch; refuse TurboMind it cannot run."""
    if requested == "pytorch":
        return "pytorch"
    if turbomind_supported:
        return "turbomind"
    if requested == "turbomind":
        raise ValueError("TurboMind does not support this model (or is not installed); "
                         "use backend='pytorch' or 'auto'")
    return "pytorch"


def backend_config_kwargs(backend: Backend, *, tp: int, devices: list[int] | None,
                          session_len: int | None, cache_max_entry_count: float,
                          quant_policy: int, model_format: str | None,
                          max_batch_size: int | None) -> dict[str, Any]:
    """Keyword arguments for `TurbomindEngineConfig` or `PytorchEngineConfig`."""
    if devices is not None and len(devices) != tp:
        raise ValueError(f"devices {devices} must name exactly tp={tp} GPUs")
    kwargs: dict[str, Any] = {
        "tp": tp,
        "session_len": session_len,
        "cache_max_entry_count": cache_max_entry_count,
        "quant_policy": quant_policy,
        "max_batch_size": max_batch_size,
    }
    if backend == "turbomind":
        kwargs.update(devices=devices, model_format=model_format)
    elif model_format not in (None, "hf", "awq", "gptq"):
        # The PyTorch engine reads AWQ/GPTQ from the checkpoint; its model_format means e.g. fp8.
        kwargs["model_format"] = model_format
    return kwargs


def classify_error(message: str) -> ErrorCode:
    """The error code an LMDeploy failure text stands for."""
    lowered = message.lower()
    if any(marker in lowered for marker in _OOM_MARKERS):
        return ErrorCode.out_of_memory
    if any(marker in lowered for marker in _OVERFLOW_MARKERS):
        return ErrorCode.context_overflow
    return ErrorCode.engine_error


def to_output(response: ResponseLike, *, partial: bool = False) -> EngineOutput:
    """An `EngineOutput` from an LMDeploy response; failures (which do not raise) become errors.

    A partial response (generation still running) has no finish reason yet.
    """
    finish = "length" if partial else _FINISHED.get(response.finish_reason)
    if finish is not None:
        return EngineOutput(text=response.text, prompt_tokens=response.input_token_len,
                            completion_tokens=response.generate_token_len, finish_reason=finish)
    detail = response.text or f"finish_reason={response.finish_reason!r}"
    raise TesseraError(classify_error(detail), f"LMDeploy failed the request: {detail}",
                       finish_reason=response.finish_reason)


class LMDeployEngine:
    """An LMDeploy pipeline on local weights; LMDeploy batches concurrent requests itself."""

    name = "lmdeploy"

    def __init__(self, model_path: Path, *,
                 backend: Literal["turbomind", "pytorch", "auto"] = "auto", tp: int = 1,
                 devices: list[int] | None = None, session_len: int | None = None,
                 cache_max_entry_count: float = 0.8, quant_policy: int = 0,
                 model_format: str | None = None, max_batch_size: int | None = None) -> None:
        from lmdeploy import PytorchEngineConfig, TurbomindEngineConfig, VisionConfig, pipeline
        from lmdeploy.archs import autoget_backend

        model_path = Path(model_path)
        if not model_path.is_dir():
            # A non-directory would be taken for a hub name and downloaded.
            raise ValueError(f"{model_path} is not a local model directory")
        chosen = choose_backend(
            backend, backend != "pytorch" and autoget_backend(str(model_path)) == "turbomind")
        kwargs = backend_config_kwargs(
            chosen, tp=tp, devices=devices, session_len=session_len,
            cache_max_entry_count=cache_max_entry_count, quant_policy=quant_policy,
            model_format=model_format, max_batch_size=max_batch_size)
        if chosen == "pytorch" and devices is not None:
            _pin_visible_devices(devices)
        backend_config = (TurbomindEngineConfig(**kwargs) if chosen == "turbomind"
                          else PytorchEngineConfig(**kwargs))
        self.backend: Backend = chosen
        self.tokens_per_tile = model_tokens_per_tile(model_path)
        self._pipe = pipeline(str(model_path), backend_config=backend_config,
                              vision_config=VisionConfig())
        self.session_len: int | None = getattr(self._pipe.backend_config, "session_len", None)

    def generate(self, request: EngineRequest, on_text: OnText | None = None) -> EngineOutput:
        """Answer one request, streaming its text; safe from any thread.

        The pipeline runs every request on its own event-loop thread, so calls from many
        worker threads become concurrent requests that the engine batches continuously.
        """
        self._check_fits(request)
        from lmdeploy import GenerationConfig

        config = GenerationConfig(**generation_config_kwargs(request.generation,
                                                             request.json_schema))
        merged: Any = None
        try:
            for chunk in self._pipe.stream_infer(build_messages(request), gen_config=config):
                if on_text is not None and chunk.text:
                    on_text(chunk.text)
                merged = chunk if merged is None else merged.extend(chunk)
                if request.should_stop is not None and request.should_stop():
                    # Leaving the generator makes the pipeline abort this session.
                    return replace(to_output(merged, partial=True), finish_reason="canceled")
        except Exception as exc:  # LMDeploy raises for failures outside a running request
            raise TesseraError(classify_error(str(exc)),
                               f"LMDeploy failed the request: {exc}") from exc
        return to_output(merged)

    def generate_batch(self, requests: list[EngineRequest]) -> list[EngineOutput]:
        """Answer several requests in one pipeline call, which the engine runs concurrently."""
        for request in requests:
            self._check_fits(request)
        from lmdeploy import GenerationConfig

        prompts = [build_messages(request) for request in requests]
        configs = [GenerationConfig(**generation_config_kwargs(request.generation,
                                                               request.json_schema))
                   for request in requests]
        try:
            responses = self._pipe(prompts, gen_config=configs)
        except Exception as exc:  # LMDeploy raises for failures outside a running request
            raise TesseraError(classify_error(str(exc)),
                               f"LMDeploy failed the request: {exc}") from exc
        return [to_output(response) for response in responses]

    def close(self) -> None:
        """Stop the engine and free its GPU memory."""
        self._pipe.close()

    def _check_fits(self, request: EngineRequest) -> None:
        visual = visual_tokens(request, self.tokens_per_tile)
        if self.session_len is not None and visual >= self.session_len:
            raise TesseraError(
                ErrorCode.context_overflow,
                f"The images alone need {visual} tokens but the engine's session holds "
                f"{self.session_len}; send fewer tiles, frames or pages.",
                visual_tokens=visual, session_len=self.session_len)


def _pin_visible_devices(devices: list[int]) -> None:
    """Make only `devices` visible to CUDA, which the PyTorch engine needs before CUDA starts."""
    import torch

    wanted = ",".join(str(device) for device in devices)
    started = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    if started and os.environ.get("CUDA_VISIBLE_DEVICES") != wanted:
        raise RuntimeError(f"CUDA already started in this process; set CUDA_VISIBLE_DEVICES="
                           f"{wanted} before the worker starts")
    os.environ["CUDA_VISIBLE_DEVICES"] = wanted

