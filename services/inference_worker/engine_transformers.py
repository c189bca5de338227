"""The reference engine: InternVL through transformers' generate, batches left-padded."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from transformers import AutoTokenizer, InternVLForConditionalGeneration
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from services.inference_worker.engine import (
    EngineImage,
    EngineLimits,
    EngineOutput,
    EngineRequest,
    OnText,
    tokens_per_tile,
)
from services.inference_worker.prompt import conversation
from shared.errors import ErrorCode, TesseraError
from shared.pixels import TILE_SIZE, normalize_tiles
from shared.schemas import GenerationParams
from shared.tile_plan import TilePlan


@dataclass(frozen=True)
class _Prepared:
    """One request turned into model inputs, with its token budget."""

    input_ids: list[int]
    tiles: np.ndarray  # uint8 (n, 448, 448, 3), all images in prompt order
    seen: tuple[TilePlan, ...]  # the grids of the request's own images, as fed
    max_new_tokens: int
    min_new_tokens: int
    generation: GenerationParams
    on_text: OnText | None = None
    should_stop: Callable[[], bool] | None = None


@dataclass
class _Pending:
    """A prepared request waiting for the batching thread, and where its answer goes."""

    item: _Prepared
    future: Future[EngineOutput] = field(default_factory=Future)


# Put on the waiting queue by close(): the batching thread ends when it takes it.
_STOP = None


class TransformersEngine:
    """InternVLForConditionalGeneration loaded once; concurrent `generate` calls are batched.

    Callers on many threads each block on their own request; one thread collects what arrived
    within a short window and runs it as one padded `generate` per group of equal settings.
    """

    name = "transformers"

    def __init__(self, model_path: Path, *, device: str = "cpu", dtype: str = "auto",
                 max_batch_size: int = 8, batch_window_seconds: float = 0.01,
                 system_message: str | None = None) -> None:
        self.device = torch.device(device)
        # Opens every conversation that brings no system message of its own.
        self.system_message = system_message
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        torch_dtype: Any = dtype if dtype == "auto" else getattr(torch, dtype)
        model = InternVLForConditionalGeneration.from_pretrained(model_path, dtype=torch_dtype)
        self.model = model.to(self.device).eval()  # type: ignore[arg-type]
        config = self.model.config
        vision = config.vision_config
        self.tokens_per_tile = tokens_per_tile(vision.image_size, vision.patch_size,
                                               config.downsample_ratio)
        self.max_positions = int(config.text_config.max_position_embeddings)
        self.limits = EngineLimits(context_length=self.max_positions,
                                   tokens_per_tile=self.tokens_per_tile)
        self.image_token_id = int(config.image_token_id)
        self._image_token = self.tokenizer.convert_ids_to_tokens(self.image_token_id)
        self._image_start = getattr(self.tokenizer, "start_image_token", "<img>")
        self._image_end = getattr(self.tokenizer, "end_image_token", "</img>")
        eos = self.model.generation_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.append(self.tokenizer.eos_token_id)
        if not eos_ids:
            raise ValueError(f"{model_path} defines no end-of-sequence token")
        self.eos_token_ids = sorted(set(eos_ids))
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_ids[0]
        # One generate at a time: seeding swaps the global RNG, and the model is not re-entrant.
        self._lock = threading.Lock()
        self.max_batch_size = max_batch_size
        self.batch_window_seconds = batch_window_seconds
        self._waiting: queue.Queue[_Pending | None] = queue.Queue()
        self._batcher = threading.Thread(target=self._serve, name="transformers-batcher",
                                         daemon=True)
        self._batcher.start()

    def generate(self, request: EngineRequest, on_text: OnText | None = None) -> EngineOutput:
        """Answer one request, batched with whatever else is in flight; safe from any thread."""
        pending = _Pending(self._prepare(request, on_text))
        self._waiting.put(pending)
        return pending.future.result()

    def close(self) -> None:
        """Stop the batching thread once the requests already waiting are answered; the model
        is freed when the last reference to this engine goes."""
        self._waiting.put(_STOP)
        self._batcher.join()

    def _serve(self) -> None:
        """The batching thread: take what arrived within the window and run it together."""
        while True:
            first = self._waiting.get()
            if first is _STOP:
                return
            batch = [first]
            deadline = threading.Event()
            timer = threading.Timer(self.batch_window_seconds, deadline.set)
            timer.start()
            stopping = False
            while len(batch) < self.max_batch_size and not deadline.is_set():
                try:
                    pending = self._waiting.get(timeout=self.batch_window_seconds / 4)
                except queue.Empty:
                    continue
                if pending is _STOP:
                    stopping = True
                    break
                batch.append(pending)
            timer.cancel()
            try:
                outputs = self._run_groups([pending.item for pending in batch])
            except Exception as error:  # a failed batch fails its callers, never this thread
                for pending in batch:
                    pending.future.set_exception(error)
                continue
            for pending, output in zip(batch, outputs, strict=True):
                pending.future.set_result(output)
            if stopping:
                return

    def _run_groups(self, prepared: list[_Prepared]) -> list[EngineOutput]:
        groups: dict[tuple[str, int, int], list[int]] = {}
        for index, item in enumerate(prepared):
            key = (item.generation.model_dump_json(), item.max_new_tokens, item.min_new_tokens)
            groups.setdefault(key, []).append(index)
        outputs: list[EngineOutput | None] = [None] * len(prepared)
        for indices in groups.values():
            group = [prepared[i] for i in indices]
            for index, output in zip(indices, self._run(group), strict=True):
                outputs[index] = output
        return [output for output in outputs if output is not None]

    def prompt(self, request: EngineRequest) -> str:
        """The full chat prompt, each image expanded into `<img>`, its context tokens, `</img>`."""
        messages = conversation(request, self.system_message, self._render_image)
        return cast(str, self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True))

    def input_ids(self, request: EngineRequest) -> list[int]:
        """The prompt's token ids, with the tokenizer's own special tokens (a BOS where it has
        one), as upstream `chat()` and LMDeploy tokenize it."""
        ids: list[int] = self.tokenizer(self.prompt(request))["input_ids"]
        return ids

    def _render_image(self, image: EngineImage) -> str:
        context = self._image_token * (self.tokens_per_tile * image.num_tiles)
        return f"{self._image_start}{context}{self._image_end}"

    def _prepare(self, request: EngineRequest, on_text: OnText | None = None) -> _Prepared:
        input_ids = self.input_ids(request)
        images = request.all_images
        num_tiles = sum(image.num_tiles for image in images)
        visual = self.tokens_per_tile * num_tiles
        room = self.max_positions - len(input_ids)
        if room < 1:
            raise TesseraError(
                ErrorCode.context_overflow,
                f"The prompt needs {len(input_ids)} tokens ({visual} of them for {num_tiles} "
                f"image tiles at {self.tokens_per_tile} each) but the model reads at most "
                f"{self.max_positions}; send fewer tiles, frames or pages, or a shorter question.",
                prompt_tokens=len(input_ids), max_positions=self.max_positions)
        tiles = (np.concatenate([image.tiles for image in images])
                 if images else np.zeros((0, TILE_SIZE, TILE_SIZE, 3), dtype=np.uint8))
        max_new = min(request.generation.max_new_tokens, room)
        return _Prepared(input_ids=input_ids, tiles=tiles,
                         seen=tuple(image.plan for image in request.images),
                         max_new_tokens=max_new,
                         min_new_tokens=min(request.generation.min_new_tokens, max_new),
                         generation=request.generation, on_text=on_text,
                         should_stop=request.should_stop)

    def _run(self, group: list[_Prepared]) -> list[EngineOutput]:
        generation = group[0].generation
        width = max(len(item.input_ids) for item in group)
        input_ids = torch.full((len(group), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, item in enumerate(group):
            input_ids[row, width - len(item.input_ids):] = torch.tensor(item.input_ids)
            attention_mask[row, width - len(item.input_ids):] = 1
        kwargs: dict[str, Any] = {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
            "max_new_tokens": group[0].max_new_tokens,
            "min_new_tokens": group[0].min_new_tokens,
            "repetition_penalty": generation.repetition_penalty,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.pad_token_id,
            "do_sample": not generation.greedy,
        }
        stopper = _RowStopper([item.should_stop for item in group])
        if stopper.active:
            kwargs["stopping_criteria"] = StoppingCriteriaList([stopper])
        if any(item.on_text for item in group):
            kwargs["streamer"] = _RowStreamer(self.tokenizer, [item.on_text for item in group],
                                              self.eos_token_ids)
        if not generation.greedy:
            kwargs.update(temperature=generation.temperature, top_p=generation.top_p, top_k=0)
        tiles = np.concatenate([item.tiles for item in group])
        if len(tiles):
            kwargs["pixel_values"] = torch.from_numpy(normalize_tiles(tiles)).to(
                self.device, dtype=self.model.dtype)
        with self._lock, torch.inference_mode():
            if generation.greedy or generation.seed is None:
                sequences = self.model.generate(**kwargs)
            else:
                devices = [self.device.index or 0] if self.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(generation.seed)
                    sequences = self.model.generate(**kwargs)
        return [self._output(item, sequences[row, width:].tolist(), stopper.stopped[row])
                for row, item in enumerate(group)]

    def _output(self, item: _Prepared, new_tokens: list[int], canceled: bool) -> EngineOutput:
        stop = next((i for i, token in enumerate(new_tokens) if token in self.eos_token_ids), None)
        completion = new_tokens if stop is None else new_tokens[:stop]
        return EngineOutput(
            text=cast(str, self.tokenizer.decode(completion, skip_special_tokens=True)),
            prompt_tokens=len(item.input_ids),
            completion_tokens=len(completion),
            finish_reason="canceled" if canceled else "length" if stop is None else "stop",
            seen=item.seen,
        )


class _RowStopper(StoppingCriteria):
    """Ends the rows of a batch whose request asked to stop; the other rows go on."""

    def __init__(self, checks: list[Callable[[], bool] | None]) -> None:
        self.checks = checks
        self.stopped = [False] * len(checks)
        self.active = any(checks)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor,
                 **_: Any) -> torch.BoolTensor:
        """Per row: True once its request's check said stop (and ever after)."""
        for row, check in enumerate(self.checks):
            self.stopped[row] = self.stopped[row] or bool(check and check())
        return cast(torch.BoolTensor, torch.tensor(self.stopped, device=input_ids.device))


class _RowStreamer(BaseStreamer):
    """Hands each row of a batched `generate` its newly decoded text as tokens arrive."""

    def __init__(self, tokenizer: Any, callbacks: list[OnText | None],
                 eos_token_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.callbacks = callbacks
        self.eos_token_ids = set(eos_token_ids)
        # Per row, the tokens not yet handed over as text.
        self.tokens: list[list[int]] = [[] for _ in callbacks]
        self.done = [callback is None for callback in callbacks]
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        """Receive one step's tokens (the first call carries the prompt, which is skipped)."""
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(len(self.callbacks), -1)[:, -1].tolist()):
            if self.done[row]:
                continue
            if token in self.eos_token_ids:
                self.done[row] = True
                continue
            self.tokens[row].append(token)
            self._send(row, final=False)

    def end(self) -> None:
        """Hand over what was held back (a trailing partial character decodes as U+FFFD)."""
        for row in range(len(self.callbacks)):
            if self.callbacks[row] is not None:
                self._send(row, final=True)

    def _send(self, row: int, *, final: bool) -> None:
        # Decode only the tokens since the last complete piece: whole-answer decodes would make
        # a long answer quadratic.
        text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
        # A trailing replacement character may be half of a multi-byte character: wait for it.
        if text and (final or not text.endswith("\ufffd")):
            callback = self.callbacks[row]
            assert callback is not None
            callback(text)
            self.tokens[row] = []
