"""The GPU engine: an LMDeploy pipeline (TurboMind where it supports the model, else PyTorch).

lmdeploy is imported only inside `LMDeployEngine`, so the pure mapping functions here (generation
settings, canvases and messages, backend choice, error codes) import and test without it. Facts
of LMDeploy 0.18 this module relies on (read in its source; tests pin each against the package):
- engine configs are pydantic dataclasses: leave a field out rather than pass None for an int;
- original `InternVLChatModel` checkpoints need `trust_remote_code=True`;
- failures do not raise: a `Response` ends with finish_reason "error" and LMDeploy's
  `error_code`/`error_message`;
- a request is aborted through its session (`Session.abort`), not by leaving its iterator;
- an image part is written `<img>…</img>\\n`, parts are joined with no separator;
- original checkpoints tile each image under its own `max_dynamic_patch`; HF-native ones run
  the checkpoint's processor with its own bounds on every image.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from services.inference_worker.checkpoint import Checkpoint, CheckpointTiling, read_checkpoint
from services.inference_worker.engine import (
    EngineImage,
    EngineLimits,
    EngineOutput,
    EngineRequest,
    FinishReason,
    OnText,
)
from services.inference_worker.prompt import TurnPart, conversation_parts
from shared.errors import ErrorCode, TesseraError
from shared.pixels import TILE_SIZE
from shared.schemas import GenerationParams
from shared.tile_plan import TilePlan

if TYPE_CHECKING:
    from PIL.Image import Image

Backend = Literal["turbomind", "pytorch"]

# LMDeploy's serving error codes (lmdeploy.serve.core.exceptions.ErrorCode values) and ours.
_ERROR_CODES: dict[str, ErrorCode] = {
    "context_length_exceeded": ErrorCode.context_overflow,
    "invalid_request": ErrorCode.invalid_request,
    "unsupported_feature": ErrorCode.invalid_request,
    "preprocess_failed": ErrorCode.engine_error,
    "request_conflict": ErrorCode.engine_error,
    "engine_unavailable": ErrorCode.engine_error,
    "internal_error": ErrorCode.engine_error,
}
# 0.18 folds TurboMind's OUT_OF_MEMORY status into a generic internal error; the engine keeps
# it apart by giving that error this message (see _keep_out_of_memory_apart).
OUT_OF_MEMORY_MESSAGE = "The engine ran out of GPU memory for this request (OUT_OF_MEMORY)."
_OOM_MARKERS = ("out of memory", "out_of_memory", "outofmemory")
_FINISHED: dict[str | None, FinishReason] = {"stop": "stop", "length": "length"}


class ResponseLike(Protocol):
    """The fields of `lmdeploy.Response` this module reads."""

    text: str
    input_token_len: int
    generate_token_len: int
    finish_reason: str | None
    error_code: str | None
    error_message: str | None


def generation_config_kwargs(params: GenerationParams,
                             json_schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments for `lmdeploy.GenerationConfig` that decode as `params` asks, guided
    to JSON matching json_schema when one is given."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": params.max_new_tokens,
        "min_new_tokens": params.min_new_tokens,
        "skip_special_tokens": True,
    }
    if params.seed is not None:
        kwargs["random_seed"] = params.seed
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


def seen_grid(image: EngineImage, tiling: CheckpointTiling) -> TilePlan:
    """The grid LMDeploy's own tiling makes of the image's canvas (sent with its grid size as
    `max_dynamic_patch`): the planned grid whenever the plan kept within the tiling's bounds."""
    return tiling.grid(TILE_SIZE * image.cols, TILE_SIZE * image.rows, image.cols * image.rows)


def build_messages(request: EngineRequest, default_system: str | None) -> list[dict[str, Any]]:
    """The conversation as OpenAI-style messages with PIL canvases, in InternVL's layout.

    Each canvas carries `max_dynamic_patch = cols·rows`, so an original checkpoint's tiling of
    it reproduces the grid (and makes its own thumbnail, from the canvas); HF-native
    checkpoints ignore it and apply their processor's bounds (`seen_grid` says what results).
    """
    return conversation_parts(request, default_system, _user_content)


def _user_content(parts: list[TurnPart]) -> str | list[dict[str, Any]]:
    if all(isinstance(part, str) for part in parts):
        return "".join(part for part in parts if isinstance(part, str))
    return [{"type": "text", "text": part} if isinstance(part, str) else
            {"type": "image_data", "image_data": {"data": grid_canvas(part),
                                                  "max_dynamic_patch": part.cols * part.rows}}
            for part in parts]


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


def backend_config_kwargs(backend: Backend, *, tp: int, session_len: int | None,
                          cache_max_entry_count: float, quant_policy: int,
                          model_format: str | None, max_batch_size: int | None,
                          ) -> dict[str, Any]:
    """Keyword arguments for `TurbomindEngineConfig` or `PytorchEngineConfig`.

    The process sees only its replica's GPUs (CUDA_VISIBLE_DEVICES, set before CUDA starts), so
    TurboMind's devices are 0..tp-1 and the PyTorch engine needs none. Unset options are left
    out: LMDeploy then picks its defaults (an explicit None is a validation error).
    """
    kwargs: dict[str, Any] = {"tp": tp, "cache_max_entry_count": cache_max_entry_count,
                              "quant_policy": quant_policy}
    if session_len is not None:
        kwargs["session_len"] = session_len
    if max_batch_size is not None:
        kwargs["max_batch_size"] = max_batch_size
    if backend == "turbomind":
        kwargs["devices"] = list(range(tp))
        if model_format is not None:
            kwargs["model_format"] = model_format
    elif model_format not in (None, "hf", "awq", "gptq"):
        # The PyTorch engine reads AWQ/GPTQ from the checkpoint; its model_format means e.g. fp8.
        kwargs["model_format"] = model_format
    return kwargs


def error_of(response: ResponseLike) -> TesseraError:
    """Our error for a failed LMDeploy response, from its error code and message."""
    message = response.error_message or f"finish_reason={response.finish_reason!r}"
    code = _ERROR_CODES.get(response.error_code or "", ErrorCode.engine_error)
    if any(marker in message.lower() for marker in _OOM_MARKERS):
        code = ErrorCode.out_of_memory
    return TesseraError(code, f"LMDeploy failed the request: {message}",
                        lmdeploy_error_code=response.error_code,
                        finish_reason=response.finish_reason)


def to_output(response: ResponseLike, seen: tuple[TilePlan, ...], *,
              canceled: bool = False) -> EngineOutput:
    """An `EngineOutput` from the last merged LMDeploy response; failures become errors.

    A request we aborted ends "abort" (or, aborted before it reached the engine, "error" with
    LMDeploy's `request_cancelled`): both mean canceled. Any other abort is LMDeploy's own.
    """
    finish = _FINISHED.get(response.finish_reason)
    if canceled and finish is None and response.finish_reason in ("abort", "error"):
        finish = "canceled"
    if finish is None:
        raise error_of(response)
    return EngineOutput(text=response.text, prompt_tokens=response.input_token_len,
                        completion_tokens=response.generate_token_len, finish_reason=finish,
                        seen=seen)


class LMDeployEngine:
    """An LMDeploy pipeline on local weights; LMDeploy batches concurrent requests itself."""

    name = "lmdeploy"

    def __init__(self, model_path: Path, *,
                 backend: Literal["turbomind", "pytorch", "auto"] = "auto", tp: int = 1,
                 session_len: int | None = None, cache_max_entry_count: float = 0.8,
                 quant_policy: int = 0, model_format: str | None = None,
                 max_batch_size: int | None = None, vision_batch_size: int = 1,
                 system_message: str | None = None) -> None:
        from lmdeploy import PytorchEngineConfig, TurbomindEngineConfig, VisionConfig, pipeline
        from lmdeploy.archs import autoget_backend

        model_path = Path(model_path)
        if not model_path.is_dir():
            # A non-directory would be taken for a hub name and downloaded.
            raise ValueError(f"{model_path} is not a local model directory")
        checkpoint = read_checkpoint(model_path)
        if checkpoint.tiling is None:
            raise ValueError(f"{model_path} has no processor_config.json (or "
                             "preprocessor_config.json): LMDeploy loads HF-native InternVL "
                             "checkpoints' image processor with AutoProcessor")
        self.checkpoint: Checkpoint = checkpoint
        self.tiling: CheckpointTiling = checkpoint.tiling
        # Original checkpoints (and InternLM2 tokenizers) ship their code beside the weights.
        supported = (backend != "pytorch"
                     and autoget_backend(str(model_path), trust_remote_code=True) == "turbomind")
        self.backend: Backend = choose_backend(backend, supported)
        kwargs = backend_config_kwargs(
            self.backend, tp=tp, session_len=session_len,
            cache_max_entry_count=cache_max_entry_count, quant_policy=quant_policy,
            model_format=model_format, max_batch_size=max_batch_size)
        backend_config = (TurbomindEngineConfig(**kwargs) if self.backend == "turbomind"
                          else PytorchEngineConfig(**kwargs))
        self.system_message = system_message
        self._pipe = pipeline(str(model_path), backend_config=backend_config,
                              vision_config=VisionConfig(max_batch_size=vision_batch_size),
                              trust_remote_code=True)
        _keep_out_of_memory_apart(self._pipe.async_engine)
        self.limits = EngineLimits(context_length=int(self._pipe.async_engine.session_len),
                                   tokens_per_tile=checkpoint.tokens_per_tile,
                                   tile_bounds=self.tiling.bounds)

    def generate(self, request: EngineRequest, on_text: OnText | None = None) -> EngineOutput:
        """Answer one request, streaming its text; safe from any thread.

        The pipeline runs every request on its own event-loop thread, so calls from many
        worker threads become concurrent requests that the engine batches continuously. A
        request whose job asks to stop is aborted through its session, which frees its batch
        slot and KV cache at once.
        """
        from lmdeploy import GenerationConfig

        config = GenerationConfig(**generation_config_kwargs(request.generation,
                                                             request.json_schema))
        seen = tuple(seen_grid(image, self.tiling) for image in request.images)
        session = self._pipe.session()
        merged: Any = None
        aborted = False
        try:
            for chunk in self._pipe.stream_infer(build_messages(request, self.system_message),
                                                 sessions=session, gen_config=config):
                if on_text is not None and chunk.text:
                    on_text(chunk.text)
                merged = chunk if merged is None else merged.extend(chunk)
                if not aborted and request.should_stop is not None and request.should_stop():
                    aborted = True
                    session.abort()  # the stream then ends with finish_reason "abort"
        finally:
            # 0.18 keeps the session of a request refused before its session was bound (an
            # uncompilable response_format, say); removing it again is harmless.
            self._pipe.session_mgr.remove(session)
        if merged is None:
            raise TesseraError(ErrorCode.engine_error, "LMDeploy returned no response")
        return to_output(merged, seen, canceled=aborted)

    def close(self) -> None:
        """Stop the engine and free its GPU memory."""
        self._pipe.close()


def _keep_out_of_memory_apart(async_engine: Any) -> None:
    """Make LMDeploy report TurboMind's OUT_OF_MEMORY status as such.

    0.18 maps every failed status to a `RequestError` through `_request_error_from_status`,
    turning OUT_OF_MEMORY into a generic internal error; this wraps that one mapping on this
    engine only, so an OOM ends the job `out_of_memory` instead of a vague `engine_error`.
    """
    from lmdeploy.messages import ResponseType
    from lmdeploy.serve.core.exceptions import ErrorCode as LMDeployErrorCode
    from lmdeploy.serve.core.exceptions import RequestError

    original = async_engine._request_error_from_status

    def request_error_from_status(status: ResponseType) -> RequestError:
        if status == ResponseType.OUT_OF_MEMORY:
            return RequestError(LMDeployErrorCode.INTERNAL_ERROR, OUT_OF_MEMORY_MESSAGE)
        error: RequestError = original(status)
        return error

    async_engine._request_error_from_status = request_error_from_status
