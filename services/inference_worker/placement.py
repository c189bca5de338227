"""Placement of model replicas on one node's GPUs: a pure planner over an explicit memory model.

Memory model (GB here means GiB, 2**30 bytes, as nvidia-smi and NVML report):
- Weights: the vision tower and projector at 2 bytes per parameter always; the LLM at 2 bytes
  per parameter in bf16, or for AWQ W4A16 (group size 128) 4 bits plus a 16-bit scale and a
  4-bit zero per group, ~0.52 bytes per parameter, except the token embedding and LM head
  (2 x vocab x hidden), which stay 16-bit. Tensor parallelism splits all weights evenly over a
  replica's GPUs (an approximation for the vision tower).
- KV cache per token: 2 (K and V) x layers x KV heads x head dim x bytes per value (2 for a
  16-bit cache, 1 for int8, 0.5 for int4), split over the replica's GPUs.
- Per GPU, `overhead_gb` is reserved (CUDA context, NCCL buffers, activations, the vision
  encoder's workspace). Of what is left after weights and overhead, LMDeploy's
  `cache_max_entry_count` share (`kv_share`) becomes KV cache.
- Sequences a replica holds = its KV cache / (context length x KV bytes per token): every
  sequence in flight is counted at the full context, so real (shorter) prompts leave headroom.

Decisions, per model, in the order the models are listed:
1. Tensor parallelism (TP): a power of two, at most the node's GPU count, dividing the
   attention heads and the KV heads, for which TP of the node's largest GPUs hold the weights,
   the overhead and `min_sequences` full-context sequences. Of those, the TP whose replicas
   serve the most of the wanted concurrency on the whole node, then the one using the fewest
   GPUs to do it, then the smallest (so a model that fits one GPU runs without TP).
2. Replicas wanted: the demand's explicit count, else ceil(concurrency / sequences per replica).
3. GPUs: every model first gets one replica (in list order), then the remaining GPUs go round-
   robin, one replica at a time, to models below their wanted count. A replica takes the
   smallest free GPUs that fit (best fit, then lowest id); a GPU is never shared.
4. A model that gets no replica, or fewer than an explicit count, makes the plan fail with a
   `PlacementError` naming the model and the memory it is short.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from services.inference_worker.catalog import ModelSpec, catalog_spec

Quantization = Literal["bf16", "awq"]
KVBits = Literal[16, 8, 4]

GIB = 2**30
# AWQ W4A16, group size 128: 4-bit weights + a 16-bit scale and a 4-bit zero per 128 weights.
AWQ_BYTES_PER_PARAM = 0.5 + (2 + 0.5) / 128
BF16_BYTES = 2


@dataclass(frozen=True)
class GPU:
    """One GPU of the node: its device id and memory (GiB)."""

    id: int
    memory_gb: float


@dataclass(frozen=True)
class Assumptions:
    """The memory-model constants a plan is made under."""

    overhead_gb: float = 2.0
    kv_share: float = 0.8
    min_sequences: int = 1


DEFAULT_ASSUMPTIONS = Assumptions()


@dataclass(frozen=True)
class ModelDemand:
    """One model to serve: how it is quantised, its context length and the concurrency wanted."""

    name: str
    spec: ModelSpec
    quantization: Quantization = "bf16"
    context_length: int = 8192
    concurrency: int = 1
    kv_quant_bits: KVBits = 16
    replicas: int | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.context_length < 1:
            raise ValueError(f"{self.name}: concurrency and context_length must be positive")
        if self.replicas is not None and self.replicas < 1:
            raise ValueError(f"{self.name}: replicas must be at least 1 when given")
        if self.spec.max_context and self.context_length > self.spec.max_context:
            raise ValueError(f"{self.name}: context_length {self.context_length} exceeds the "
                             f"model's {self.spec.max_context}")
        if self.kv_quant_bits != 16 and self.spec.head_dim != 128:
            # LMDeploy's int8/int4 KV kernels exist for head_dim 128 only (DESIGN.md §4).
            raise ValueError(f"{self.name}: a {self.kv_quant_bits}-bit KV cache needs head_dim "
                             f"128, the model has {self.spec.head_dim}")


@dataclass(frozen=True)
class Replica:
    """One worker process: a model on its own GPUs, with the sequences its KV cache holds."""

    model: str
    index: int
    tp: int
    gpu_ids: tuple[int, ...]
    sequences: int


@dataclass(frozen=True)
class ModelPlan:
    """What the planner decided for one model, with the memory figures behind it."""

    demand: ModelDemand
    tp: int
    weights_gb: float
    kv_gb_per_sequence: float
    need_per_gpu_gb: float
    wanted_replicas: int
    replicas: tuple[Replica, ...]

    @property
    def served_concurrency(self) -> int:
        """Full-context sequences all replicas hold together, capped at the concurrency asked."""
        return min(self.demand.concurrency, sum(replica.sequences for replica in self.replicas))


@dataclass(frozen=True)
class Shortfall:
    """Why one model could not be placed, and the GiB it lacks."""

    model: str
    short_gb: float
    reason: str


class PlacementError(ValueError):
    """The models do not fit the node; `shortfalls` says which and by how much."""

    def __init__(self, shortfalls: list[Shortfall]) -> None:
        self.shortfalls = shortfalls
        super().__init__("; ".join(f"{item.model}: {item.short_gb:.1f} GB short ({item.reason})"
                                   for item in shortfalls))


@dataclass(frozen=True)
class Plan:
    """Replicas for every model on the node, and the decisions that produced them."""

    gpus: tuple[GPU, ...]
    models: tuple[ModelPlan, ...]
    assumptions: Assumptions = field(default=DEFAULT_ASSUMPTIONS)

    @property
    def replicas(self) -> list[Replica]:
        """Every replica of every model, models in demand order."""
        return [replica for model in self.models for replica in model.replicas]

    def explain(self) -> str:
        """The plan as a Markdown table, one row per replica, with the model's figures."""
        lines = ["| model | quant | TP | weights GB | KV GB/seq | need GB/GPU | replica | GPUs "
                 "| seqs | served |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for model in self.models:
            served = f"{model.served_concurrency}/{model.demand.concurrency}"
            for replica in model.replicas:
                lines.append(
                    f"| {model.demand.name} | {model.demand.quantization} | {model.tp} "
                    f"| {model.weights_gb:.1f} | {model.kv_gb_per_sequence:.2f} "
                    f"| {model.need_per_gpu_gb:.1f} | r{replica.index} "
                    f"| {','.join(map(str, replica.gpu_ids))} | {replica.sequences} | {served} |")
        free = sorted(set(gpu.id for gpu in self.gpus) - {g for r in self.replicas
                                                           for g in r.gpu_ids})
        lines.append(f"\nIdle GPUs: {', '.join(map(str, free)) or 'none'}. Assumptions: "
                     f"{self.assumptions.overhead_gb:g} GB overhead per GPU, KV share "
                     f"{self.assumptions.kv_share:g}, sequences at full context.")
        return "\n".join(lines)


def weights_gb(spec: ModelSpec, quantization: Quantization) -> float:
    """GiB of weights for the whole model (all GPUs of a replica together)."""
    vision = spec.vision_params_b * 1e9 * BF16_BYTES
    llm_params = spec.llm_params_b * 1e9
    if quantization == "bf16":
        return (vision + llm_params * BF16_BYTES) / GIB
    embeddings = min(llm_params, 2.0 * spec.vocab_size * spec.hidden_size)
    quantized = (llm_params - embeddings) * AWQ_BYTES_PER_PARAM
    return (vision + embeddings * BF16_BYTES + quantized) / GIB


def kv_gb_per_token(spec: ModelSpec, kv_bits: KVBits = 16) -> float:
    """GiB of KV cache one token takes across all layers and KV heads."""
    return 2 * spec.layers * spec.kv_heads * spec.head_dim * (kv_bits / 8) / GIB


def tp_candidates(spec: ModelSpec, gpu_count: int) -> list[int]:
    """Powers of two up to `gpu_count` that divide both the attention and the KV heads."""
    candidates = []
    tp = 1
    while tp <= gpu_count:
        if spec.heads % tp == 0 and spec.kv_heads % tp == 0:
            candidates.append(tp)
        tp *= 2
    return candidates


def _sequences(memory_gb: float, tp: int, weights: float, kv_per_seq: float,
               assumptions: Assumptions) -> int:
    """Full-context sequences a replica on `tp` GPUs of `memory_gb` each holds (may be < 0)."""
    free = memory_gb - weights / tp - assumptions.overhead_gb
    if free <= 0:
        return -1
    return math.floor(free * assumptions.kv_share * tp / kv_per_seq)


def _need_per_gpu(tp: int, weights: float, kv_per_seq: float, assumptions: Assumptions) -> float:
    """GiB each GPU must have for `min_sequences` full-context sequences."""
    kv = assumptions.min_sequences * kv_per_seq / tp / assumptions.kv_share
    return weights / tp + assumptions.overhead_gb + kv


def _short(need: float, tp: int, memories: list[float]) -> float:
    """GiB missing when `tp` of `memories` (largest first; absent GPUs count 0) each need `need`."""
    best = sorted(memories, reverse=True)[:tp]
    best += [0.0] * (tp - len(best))
    return sum(max(0.0, need - memory) for memory in best)


def _size_model(demand: ModelDemand, gpus: list[GPU],
                assumptions: Assumptions) -> ModelPlan | Shortfall:
    """Choose TP and the replicas wanted for one model, or say how far it is from fitting."""
    spec = demand.spec
    weights = weights_gb(spec, demand.quantization)
    kv_per_seq = kv_gb_per_token(spec, demand.kv_quant_bits) * demand.context_length
    largest = sorted((gpu.memory_gb for gpu in gpus), reverse=True)
    candidates = tp_candidates(spec, len(gpus))
    if not candidates:
        return Shortfall(demand.name, 0.0, "the node has no GPUs")
    options = []
    for tp in candidates:
        sequences = min(_sequences(largest[tp - 1], tp, weights, kv_per_seq, assumptions),
                        demand.concurrency)
        if sequences >= assumptions.min_sequences:
            wanted = demand.replicas or math.ceil(demand.concurrency / sequences)
            fitting = min(wanted, len(gpus) // tp)
            served = min(demand.concurrency, fitting * sequences)
            options.append((-served, fitting * tp, tp, wanted))
    if options:
        _, _, tp, wanted = min(options)
        return ModelPlan(demand, tp, weights, kv_per_seq,
                         _need_per_gpu(tp, weights, kv_per_seq, assumptions), wanted, ())
    tp = candidates[-1]
    need = _need_per_gpu(tp, weights, kv_per_seq, assumptions)
    return Shortfall(demand.name, _short(need, tp, largest),
                     f"needs {need:.1f} GB on each of {tp} GPU(s) at TP {tp}, the most its "
                     f"{spec.heads} heads / {spec.kv_heads} KV heads allow on this node; "
                     f"largest GPU {largest[0]:g} GB")


def _take_gpus(free: list[GPU], tp: int, need: float) -> list[GPU] | None:
    """The `tp` smallest free GPUs that each have `need` GiB, or None."""
    fitting = sorted((gpu for gpu in free if gpu.memory_gb >= need),
                     key=lambda gpu: (gpu.memory_gb, gpu.id))
    return fitting[:tp] if len(fitting) >= tp else None


def plan_placement(gpus: list[GPU], demands: list[ModelDemand],
                   assumptions: Assumptions = DEFAULT_ASSUMPTIONS) -> Plan:
    """Choose TP, replica count and GPU ids for every model; raise `PlacementError` if any fails."""
    names = [demand.name for demand in demands]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    sized = [_size_model(demand, gpus, assumptions) for demand in demands]
    shortfalls = [item for item in sized if isinstance(item, Shortfall)]
    if shortfalls:
        raise PlacementError(shortfalls)
    models = [item for item in sized if isinstance(item, ModelPlan)]
    free = list(gpus)
    placed: dict[str, list[Replica]] = {model.demand.name: [] for model in models}

    def place(model: ModelPlan) -> bool:
        taken = _take_gpus(free, model.tp, model.need_per_gpu_gb)
        if taken is None:
            return False
        for gpu in taken:
            free.remove(gpu)
        sequences = _sequences(min(gpu.memory_gb for gpu in taken), model.tp, model.weights_gb,
                               model.kv_gb_per_sequence, assumptions)
        replicas = placed[model.demand.name]
        replicas.append(Replica(model.demand.name, len(replicas), model.tp,
                                tuple(sorted(gpu.id for gpu in taken)), sequences))
        return True

    for model in models:
        if not place(model):
            shortfalls.append(Shortfall(
                model.demand.name, _short(model.need_per_gpu_gb, model.tp,
                                          [gpu.memory_gb for gpu in free]),
                f"needs {model.tp} free GPU(s) with {model.need_per_gpu_gb:.1f} GB each; the "
                f"models listed before it took the others"))
    growing = [model for model in models if placed[model.demand.name]]
    while growing:
        growing = [model for model in growing
                   if len(placed[model.demand.name]) < model.wanted_replicas and place(model)]
    for model in models:
        count = len(placed[model.demand.name])
        if model.demand.replicas is not None and 0 < count < model.demand.replicas:
            missing = model.demand.replicas - count
            shortfalls.append(Shortfall(
                model.demand.name, missing * model.tp * model.need_per_gpu_gb,
                f"{model.demand.replicas} replicas asked, {count} fit"))
    if shortfalls:
        raise PlacementError(shortfalls)
    return Plan(tuple(gpus), tuple(ModelPlan(model.demand, model.tp, model.weights_gb,
                                             model.kv_gb_per_sequence, model.need_per_gpu_gb,
                                             model.wanted_replicas,
                                             tuple(placed[model.demand.name]))
                                   for model in models), assumptions)


README_NODES = {"1x24 GB": [24.0], "1x80 GB": [80.0], "8x80 GB": [80.0] * 8,
                "8x141 GB": [141.0] * 8}
README_MODELS = ["InternVL3-1B", "InternVL3-8B", "InternVL3-38B", "InternVL3-78B"]


def _cell(gpus: list[GPU], demand: ModelDemand) -> str:
    try:
        model = plan_placement(gpus, [demand]).models[0]
    except PlacementError as error:
        return f"✗ {error.shortfalls[0].short_gb:.0f} GB short"
    return (f"TP {model.tp} x {len(model.replicas)} · "
            f"{model.served_concurrency}/{demand.concurrency}")


def readme_table(context_length: int = 8192, concurrency: int = 32) -> str:
    """The README's table: each model alone on each common node, bf16 and AWQ where published."""
    header = "| model | " + " | ".join(README_NODES) + " |"
    lines = [header, "|---|" + "---|" * len(README_NODES)]
    for name in README_MODELS:
        spec = catalog_spec(name)
        quantizations: list[Quantization] = ["bf16"]
        if "awq" in spec.quantizations:
            quantizations.append("awq")
        for quantization in quantizations:
            demand = ModelDemand(name, spec, quantization, context_length, concurrency)
            cells = [_cell([GPU(i, memory) for i, memory in enumerate(memories)], demand)
                     for memories in README_NODES.values()]
            lines.append(f"| {name} {quantization} | " + " | ".join(cells) + " |")
    assumptions = DEFAULT_ASSUMPTIONS
    lines.append(f"\nCells: TP degree x replicas · full-context sequences held / wanted. "
                 f"Context {context_length} tokens, {concurrency} concurrent, 16-bit KV cache, "
                 f"{assumptions.overhead_gb:g} GB overhead per GPU, KV share "
                 f"{assumptions.kv_share:g}; each model alone on the node.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(readme_table())
