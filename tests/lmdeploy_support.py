"""LMDeploy on this CPU: a stand-in for its GPU engine, and an original-format tiny model.

The GPU engine is the one part of LMDeploy that cannot run here. LMDeploy's `AsyncEngine` hands
its engine each request as token ids plus the pixel values of its own InternVL preprocessing.
This backend answers them with the tiny model through transformers, token by token, stops a
request when LMDeploy cancels its session, records what it was handed, and can fail requests
with a given engine status. Everything above it (pipeline, sessions, chat template, image
preprocessing, detokenising, error mapping) is LMDeploy's own code.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from lmdeploy.messages import EngineOutput, ResponseType
from lmdeploy.serve.core.async_engine import AsyncEngine
from transformers import InternVLForConditionalGeneration
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer


@dataclass
class Handed:
    """One request as LMDeploy handed it to the engine."""

    session_id: int
    input_ids: list[int]
    pixel_values: torch.Tensor | None
    gen_config: Any


@dataclass
class CpuBackend:
    """The engine object `AsyncEngine` builds: config, request instances, close."""

    engine_config: Any
    model: InternVLForConditionalGeneration
    handed: list[Handed] = field(default_factory=list)
    canceled: list[int] = field(default_factory=list)
    # A status to fail every request with instead of answering (OUT_OF_MEMORY, ...).
    fail_with: ResponseType | None = None
    # Seconds each decoding step takes, so tests can cancel mid-answer.
    step_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def create_instance(self) -> CpuInstance:
        """One request handle (LMDeploy keeps max_batch_size of them in a pool)."""
        return CpuInstance(self)

    def close(self) -> None:
        """Nothing to free."""


class CpuInstance:
    """A request handle: streams one request's new tokens as the GPU engine's instances do."""

    def __init__(self, backend: CpuBackend) -> None:
        self.backend = backend
        self.cancel_events: dict[int, threading.Event] = {}

    async def async_stream_infer(self, session_id: int, input_ids: list[int],
                                 gen_config: Any = None, multimodal: Any = None,
                                 **_: Any) -> AsyncIterator[EngineOutput]:
        """Yield SUCCESS with each new token, then FINISH (or CANCEL) with the last ones."""
        pixel_values = (torch.cat([item["pixel_values"] for item in multimodal])
                        if multimodal else None)
        self.backend.handed.append(Handed(session_id, list(input_ids), pixel_values, gen_config))
        if self.backend.fail_with is not None:
            yield EngineOutput(self.backend.fail_with, [])
            return
        cancel = self.cancel_events.setdefault(session_id, threading.Event())
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[int | None] = asyncio.Queue()
        generation = loop.run_in_executor(None, self._generate, input_ids, pixel_values,
                                          gen_config, cancel, loop, tokens)
        held: list[int] = []
        while (token := await tokens.get()) is not None:
            if held:
                yield EngineOutput(ResponseType.SUCCESS, held)
            held = [token]
        await generation
        self.cancel_events.pop(session_id, None)
        yield EngineOutput(ResponseType.CANCEL if cancel.is_set() else ResponseType.FINISH, held)

    async def async_cancel(self, session_id: int) -> None:
        """Stop the session's request at its next decoding step."""
        self.backend.canceled.append(session_id)
        self.cancel_events.setdefault(session_id, threading.Event()).set()

    def _generate(self, input_ids: list[int], pixel_values: torch.Tensor | None, gen_config: Any,
                  cancel: threading.Event, loop: asyncio.AbstractEventLoop,
                  tokens: asyncio.Queue[int | None]) -> None:
        def send(token: int | None) -> None:
            loop.call_soon_threadsafe(tokens.put_nowait, token)

        stops = list(gen_config.stop_token_ids or [])
        kwargs: dict[str, Any] = {
            "input_ids": torch.tensor([input_ids]), "do_sample": False,
            "max_new_tokens": gen_config.max_new_tokens,
            "min_new_tokens": gen_config.min_new_tokens or 0,
            "eos_token_id": stops, "pad_token_id": stops[0],
            "streamer": _TokenStreamer(send, stops),
            "stopping_criteria": StoppingCriteriaList([_Canceled(cancel, self.backend)]),
        }
        if pixel_values is not None:
            kwargs["pixel_values"] = pixel_values.to(self.backend.model.dtype)
        try:
            with self.backend.lock, torch.inference_mode():
                self.backend.model.generate(**kwargs)
        finally:
            send(None)


class _TokenStreamer(BaseStreamer):
    """Hands each generated token on; the first call carries the prompt and is skipped."""

    def __init__(self, send: Any, stops: list[int]) -> None:
        self.send = send
        self.stops = set(stops)
        self.prompt_seen = False
        self.stopped = False

    def put(self, value: torch.Tensor) -> None:
        """Send the step's token (the stop token too, as the GPU engine does, then no more)."""
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        if not self.stopped:
            token = int(value.reshape(-1)[-1])
            self.send(token)
            self.stopped = token in self.stops

    def end(self) -> None:
        """Nothing held back."""


class _Canceled(StoppingCriteria):
    """Ends generation once the session was canceled; paces steps when the test asks."""

    def __init__(self, cancel: threading.Event, backend: CpuBackend) -> None:
        self.cancel = cancel
        self.backend = backend

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor,
                 **_: Any) -> torch.BoolTensor:
        """True once canceled."""
        if self.backend.step_seconds:
            self.cancel.wait(self.backend.step_seconds)
        return torch.BoolTensor([self.cancel.is_set()])


@contextmanager
def cpu_backend(monkeypatch: pytest.MonkeyPatch, weights: Path,
                max_batch_size: int = 16) -> Iterator[list[CpuBackend]]:
    """While active, every LMDeploy PyTorch engine built is a CpuBackend answering with the
    model at `weights`; the list collects them."""
    built: list[CpuBackend] = []
    model = InternVLForConditionalGeneration.from_pretrained(weights)
    model.eval()  # type: ignore[no-untyped-call]

    def build(self: AsyncEngine, model_path: str, backend_config: Any = None,
              **_: Any) -> CpuBackend:
        if backend_config.max_batch_size is None:
            backend_config.max_batch_size = max_batch_size
        backend = CpuBackend(backend_config, model)
        built.append(backend)
        return backend

    with monkeypatch.context() as patch:
        patch.setattr(AsyncEngine, "_build_pytorch", build)
        yield built


def original_twin(tiny_dir: Path, out: Path) -> Path:
    """The tiny model's tokenizer and configs in the original `InternVLChatModel` layout.

    Its config.json carries the tiling settings (`dynamic_image_size`, `max_dynamic_patch`,
    ...) and its chat template opens every conversation without a system message with
    InternVL's default one, as the original InternVL2.5/3 checkpoints do. No weights: the CPU
    backend answers with the tiny model's own, so both formats run the same model.
    """
    from services.inference_worker.checkpoint import INTERNVL_SYSTEM_MESSAGE

    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "generation_config.json"):
        shutil.copy(tiny_dir / name, out / name)
    hf = json.loads((tiny_dir / "config.json").read_text())
    vision = hf["vision_config"]
    config = {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
        "template": "internvl2_5", "force_image_size": 448,
        "downsample_ratio": hf["downsample_ratio"], "dynamic_image_size": True,
        "use_thumbnail": True, "min_dynamic_patch": 1, "max_dynamic_patch": 12,
        "ps_version": "v2", "select_layer": -1,
        "llm_config": {**hf["text_config"], "architectures": ["Qwen2ForCausalLM"]},
        "vision_config": {**vision, "image_size": 448, "patch_size": 14,
                          "architectures": ["InternVisionModel"]},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer_config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    template = (tiny_dir / "chat_template.jinja").read_text()
    system = ("{%- if not messages or messages[0]['role'] != 'system' -%}"
              "{{- '<|im_start|>system\\n" + INTERNVL_SYSTEM_MESSAGE + "<|im_end|>\\n' -}}"
              "{%- endif -%}")
    tokenizer_config["chat_template"] = system + template
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return out
