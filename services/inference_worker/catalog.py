"""The InternVL model catalogue (models.json) and specs read from local checkpoint directories.

A `ModelSpec` holds what GPU placement needs: parameter counts (vision tower apart, since it stays
16-bit when the LLM is quantised) and the LLM's attention shape, which sizes the KV cache and
limits tensor parallelism.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

CATALOG_PATH = Path(__file__).with_name("models.json")

# Weight-name prefixes of the vision tower and projector: original (InternVLChatModel) and
# HF-native (InternVLForConditionalGeneration, with or without the `model.` wrapper) layouts.
_VISION_PREFIXES = ("vision_model.", "mlp1.", "vision_tower.", "multi_modal_projector.",
                    "model.vision_tower.", "model.multi_modal_projector.")
# AWQ packs eight 4-bit weights into each int32 of a `qweight`.
_AWQ_PACK = 8


@dataclass(frozen=True)
class MoE:
    """Mixture-of-experts shape: every expert is resident, `active_params_b` run per token."""

    experts: int
    active_experts: int
    active_params_b: float


@dataclass(frozen=True)
class ModelSpec:
    """One InternVL checkpoint as placement sees it (parameter counts in billions)."""

    name: str
    params_b: float
    vision_params_b: float
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int
    dtype: str = "bfloat16"
    quantizations: tuple[str, ...] = ()
    vision: str = ""
    llm: str = ""
    moe: MoE | None = None
    notes: str = ""
    path: Path | None = field(default=None, compare=False)

    @property
    def llm_params_b(self) -> float:
        """Parameters of the language model (everything but the vision tower and projector)."""
        return self.params_b - self.vision_params_b


def _spec_from_entry(entry: dict[str, Any]) -> ModelSpec:
    moe = entry.get("moe")
    return ModelSpec(
        name=entry["name"], params_b=float(entry["params_b"]),
        vision_params_b=float(entry["vision_params_b"]), layers=entry["layers"],
        hidden_size=entry["hidden_size"], heads=entry["heads"], kv_heads=entry["kv_heads"],
        head_dim=entry["head_dim"], vocab_size=entry["vocab_size"],
        max_context=entry["max_context"], dtype=entry.get("dtype", "bfloat16"),
        quantizations=tuple(entry.get("quantizations", ())), vision=entry.get("vision", ""),
        llm=entry.get("llm", ""), moe=MoE(**moe) if moe else None, notes=entry.get("notes", ""))


@lru_cache
def load_catalog(path: Path = CATALOG_PATH) -> dict[str, ModelSpec]:
    """All catalogue models by name, read once from the JSON file."""
    entries = json.loads(Path(path).read_text())["models"]
    return {entry["name"]: _spec_from_entry(entry) for entry in entries}


def catalog_spec(name: str) -> ModelSpec:
    """The catalogue entry for `name` (case-insensitive; `InternVL3.5` may be spelt `3_5`)."""
    wanted = name.lower().replace(".", "_").removeprefix("opengvlab/")
    for spec in load_catalog().values():
        if spec.name.lower() == wanted:
            return spec
    raise KeyError(f"{name!r} is not in the model catalogue; known: {', '.join(load_catalog())}")


def _safetensors_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header: dict[str, Any] = json.loads(file.read(length))
    header.pop("__metadata__", None)
    return header


def _count_params(model_dir: Path) -> tuple[int, int]:
    """(all, vision) parameters from the safetensors headers, without reading any weights."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_dir} has no .safetensors weights to count parameters from")
    total = vision = 0
    for file in files:
        for name, tensor in _safetensors_header(file).items():
            if name.endswith((".qzeros", ".scales")):
                continue  # AWQ overhead, not parameters
            count = 1
            for size in tensor["shape"]:
                count *= size
            if name.endswith(".qweight"):
                count *= _AWQ_PACK
            total += count
            if name.startswith(_VISION_PREFIXES):
                vision += count
    return total, vision


def _quant_method(config: dict[str, Any], llm: dict[str, Any]) -> str | None:
    quant = config.get("quantization_config") or llm.get("quantization_config") or {}
    method = quant.get("quant_method")
    return str(method).lower() if method else None


def checkpoint_spec(model_dir: Path, name: str | None = None) -> ModelSpec:
    """A spec from a local InternVL checkpoint: its config.json plus its weights' headers.

    Reads the original layout (`llm_config`, InternVLChatModel) and the HF-native one
    (`text_config`, InternVLForConditionalGeneration).
    """
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    llm = config.get("llm_config") or config.get("text_config")
    if llm is None:
        raise ValueError(f"{model_dir}/config.json has neither llm_config nor text_config; "
                         "is it an InternVL checkpoint?")
    total, vision = _count_params(model_dir)
    heads = int(llm["num_attention_heads"])
    hidden = int(llm["hidden_size"])
    experts = llm.get("num_experts") or llm.get("num_local_experts")
    quant = _quant_method(config, llm)
    architectures = llm.get("architectures") or [llm.get("model_type", "")]
    return ModelSpec(
        name=name or model_dir.name, params_b=total / 1e9, vision_params_b=vision / 1e9,
        layers=int(llm["num_hidden_layers"]), hidden_size=hidden, heads=heads,
        kv_heads=int(llm.get("num_key_value_heads") or heads),
        head_dim=int(llm.get("head_dim") or hidden // heads), vocab_size=int(llm["vocab_size"]),
        max_context=int(llm.get("max_position_embeddings", 0)),
        dtype=str(config.get("torch_dtype") or config.get("dtype") or llm.get("torch_dtype")
                  or llm.get("dtype") or "bfloat16"),
        quantizations=(quant,) if quant else (), llm=str(architectures[0]),
        notes=(f"mixture of experts ({experts} experts): active parameters not derived"
               if experts else ""),
        path=model_dir)


def resolve_spec(name: str, path: Path | None = None) -> ModelSpec:
    """A local checkpoint's own spec when `path` holds one, else the catalogue entry for `name`."""
    if path is not None and (Path(path) / "config.json").is_file():
        return checkpoint_spec(Path(path), name)
    return catalog_spec(name)
