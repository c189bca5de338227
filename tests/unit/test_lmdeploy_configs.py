"""Every LMDeploy config we build is one LMDeploy 0.18's own classes accept.

Engine configs for each plan the README's placement table prints (both backends), vision and
generation configs for every generation option the API takes, and the GPUs a replica ends up
on, from the supervisor's plan down to what each backend is given.
"""

import dataclasses
from pathlib import Path
from typing import Any

import pydantic
import pytest
from lmdeploy import GenerationConfig, PytorchEngineConfig, TurbomindEngineConfig, VisionConfig
from lmdeploy._guided_decoding import ensure_response_format_compilable

from services.inference_worker.config import InferenceSettings
from services.inference_worker.engine_lmdeploy import (
    Backend,
    backend_config_kwargs,
    generation_config_kwargs,
)
from services.inference_worker.inventory import parse_inventory
from services.inference_worker.placement import README_MODELS, README_NODES, PlacementError
from services.inference_worker.supervisor import ModelEntry, WorkerSpec, build_workers
from shared.schemas import GenerationParams

BACKENDS: list[Backend] = ["turbomind", "pytorch"]
ENGINE_KEYS = ("tp", "session_len", "cache_max_entry_count", "quant_policy", "model_format",
               "max_batch_size")


def _engine_config(backend: Backend, settings: InferenceSettings) -> Any:
    options = {key: value for key, value in settings.engine_options().items()
               if key in ENGINE_KEYS}
    kwargs = backend_config_kwargs(backend, **options)
    config_class = TurbomindEngineConfig if backend == "turbomind" else PytorchEngineConfig
    return config_class(**kwargs)


def _settings(worker: WorkerSpec) -> InferenceSettings:
    return InferenceSettings.model_validate(worker.env)


def _readme_workers() -> list[WorkerSpec]:
    workers = []
    for name in README_MODELS:
        for quantization in ("bf16", "awq"):
            for memories in README_NODES.values():
                gpus = parse_inventory(",".join(f"{i}:{gb}" for i, gb in enumerate(memories)))
                entry = ModelEntry(name=name, path=Path(f"/models/{name}"), concurrency=32,
                                   quantization=quantization)
                try:
                    workers += build_workers([entry], gpus)[1]
                except PlacementError:
                    continue  # the table's "short" cells
    return workers


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_readme_plan_builds_engine_configs_lmdeploy_accepts(backend: Backend) -> None:
    workers = _readme_workers()
    assert len(workers) > 20
    for worker in workers:
        settings = _settings(worker)
        config = _engine_config(backend, settings)
        assert config.tp == settings.TP == len(settings.gpu_ids)
        assert config.session_len == 8192
        assert worker.env["CUDA_VISIBLE_DEVICES"] == worker.env["GPU_IDS"]
        if backend == "turbomind":
            assert config.devices == list(range(settings.TP))
            assert config.model_format == settings.MODEL_FORMAT


def test_options_left_unset_are_left_to_lmdeploy() -> None:
    kwargs = backend_config_kwargs("turbomind", tp=1, session_len=None,
                                   cache_max_entry_count=0.8, quant_policy=0,
                                   model_format=None, max_batch_size=None)
    assert "max_batch_size" not in kwargs and "session_len" not in kwargs
    assert TurbomindEngineConfig(**kwargs).max_batch_size is None  # LMDeploy picks it later
    # Why they are left out: 0.18 refuses an explicit None for an int field.
    with pytest.raises(pydantic.ValidationError):
        TurbomindEngineConfig(max_batch_size=None)


def test_batch_sizes_are_settings_passed_through() -> None:
    settings = InferenceSettings(ENGINE="lmdeploy", MAX_BATCH_SIZE=128, VISION_BATCH_SIZE=8)
    assert _engine_config("turbomind", settings).max_batch_size == 128
    assert _engine_config("pytorch", settings).max_batch_size == 128
    vision = VisionConfig(max_batch_size=settings.engine_options()["vision_batch_size"])
    assert vision.max_batch_size == 8


GENERATION_OPTIONS = [
    GenerationParams(),
    GenerationParams(max_new_tokens=1),
    GenerationParams(max_new_tokens=8192, min_new_tokens=8192),
    GenerationParams(temperature=0.7, top_p=0.9, seed=42),
    GenerationParams(temperature=2.0, top_p=0.01, repetition_penalty=0.5, seed=0),
    GenerationParams(repetition_penalty=1.3),
    GenerationParams(temperature=1.0, seed=2**31 - 1, min_new_tokens=3, max_new_tokens=5),
]
SCHEMAS: list[dict[str, Any] | None] = [
    None,
    {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]},
    {"type": "array", "items": {"type": "string", "enum": ["cat", "dog"]}, "maxItems": 3},
]


@pytest.mark.parametrize("params", GENERATION_OPTIONS)
@pytest.mark.parametrize("schema", SCHEMAS)
def test_every_generation_option_builds_a_generation_config(
        params: GenerationParams, schema: dict[str, Any] | None) -> None:
    kwargs = generation_config_kwargs(params, schema)
    config = GenerationConfig(**kwargs)
    assert (config.max_new_tokens, config.min_new_tokens) == (params.max_new_tokens,
                                                              params.min_new_tokens)
    assert config.random_seed == params.seed
    if params.greedy and params.repetition_penalty == 1.0:
        assert config.do_sample is False
    elif params.greedy:  # the penalty survives only by sampling from the top token
        assert (config.do_sample, config.top_k, config.repetition_penalty) == (
            True, 1, params.repetition_penalty)
    else:
        assert (config.do_sample, config.temperature, config.top_p, config.top_k) == (
            True, params.temperature, params.top_p, 0)
    if schema is not None:
        ensure_response_format_compilable(config.response_format)  # XGrammar compiles it


def test_a_schema_xgrammar_cannot_compile_is_refused_before_the_engine() -> None:
    kwargs = generation_config_kwargs(GenerationParams(), {"type": "no-such-type"})
    with pytest.raises(ValueError, match="Unsupported response format"):
        ensure_response_format_compilable(kwargs["response_format"])


def test_lmdeploy_has_no_request_priority_to_map_our_classes_to() -> None:
    """Interactive and batch jobs are ordered by our queues only: 0.18 has no per-request
    priority (GenerationConfig or engine configs). This fails once one appears."""
    for config_class in (GenerationConfig, TurbomindEngineConfig, PytorchEngineConfig):
        assert not any("priority" in field.name for field in dataclasses.fields(config_class))


# A replica that lands on GPU 3 (GPUs 0-2 are too small) and a TP-2 one on GPUs 4 and 5.
PLACEMENTS = [
    ("InternVL3-8B", "0:8,1:8,2:8,3:80", "3", 1),
    ("InternVL3-38B", "0:8,1:8,2:8,3:8,4:48,5:48", "4,5", 2),
]


@pytest.mark.parametrize(("model", "inventory", "gpu_ids", "tp"), PLACEMENTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_replica_runs_on_its_planned_gpus_with_either_backend(
        model: str, inventory: str, gpu_ids: str, tp: int, backend: Backend) -> None:
    entry = ModelEntry(name=model, path=Path(f"/models/{model}"), replicas=1,
                       engine="lmdeploy")
    [worker] = build_workers([entry], parse_inventory(inventory))[1]
    assert (worker.env["GPU_IDS"], worker.env["CUDA_VISIBLE_DEVICES"]) == (gpu_ids, gpu_ids)
    settings = _settings(worker)
    environ = dict(worker.env)
    settings.pin_gpus(environ)  # what the worker process does before its engine starts
    assert environ["CUDA_VISIBLE_DEVICES"] == gpu_ids  # never renumbered to "0"
    config = _engine_config(backend, settings)
    assert config.tp == tp
    if backend == "turbomind":
        assert config.devices == list(range(tp))  # numbered within the visible GPUs
    # A worker started by hand with only GPU_IDS gets the same pinning.
    by_hand: dict[str, str] = {}
    settings.pin_gpus(by_hand)
    assert by_hand["CUDA_VISIBLE_DEVICES"] == gpu_ids


def test_conflicting_gpu_settings_are_refused() -> None:
    settings = InferenceSettings(ENGINE="lmdeploy", GPU_IDS="3", TP=1)
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES=0"):
        settings.pin_gpus({"CUDA_VISIBLE_DEVICES": "0"})
    with pytest.raises(ValueError, match="exactly TP=2"):
        InferenceSettings(ENGINE="lmdeploy", GPU_IDS="3", TP=2).pin_gpus({})



def test_model_entries_pass_engine_knobs_to_their_replicas() -> None:
    entry = ModelEntry(name="InternVL3-8B", path=Path("/models/8b"), replicas=1,
                       max_batch_size=256, vision_batch_size=16, system_message="Be brief.",
                       kv_quant_bits=8)
    [worker] = build_workers([entry], parse_inventory("1x80"))[1]
    settings = _settings(worker)
    options = settings.engine_options()
    assert (options["max_batch_size"], options["vision_batch_size"],
            options["system_message"], options["quant_policy"]) == (256, 16, "Be brief.", 8)
    assert _engine_config("turbomind", settings).max_batch_size == 256
