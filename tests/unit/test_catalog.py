"""The model catalogue's consistency and specs read from local checkpoints."""

import json
from pathlib import Path

import pytest
import torch

from services.inference_worker.catalog import (
    catalog_spec,
    checkpoint_spec,
    load_catalog,
    resolve_spec,
)


def test_catalog_covers_the_families_and_sizes_users_run() -> None:
    names = set(load_catalog())
    for family, sizes in {"InternVL2_5": ["1B", "2B", "4B", "8B", "26B", "38B", "78B"],
                          "InternVL3": ["1B", "2B", "8B", "9B", "14B", "38B", "78B"],
                          "InternVL3_5": ["1B", "2B", "4B", "8B", "14B", "38B", "30B-A3B",
                                          "241B-A28B"]}.items():
        assert {f"{family}-{size}" for size in sizes} <= names


def test_catalog_entries_are_internally_consistent() -> None:
    for spec in load_catalog().values():
        assert spec.heads % spec.kv_heads == 0, spec.name
        assert 0 < spec.vision_params_b < spec.params_b, spec.name
        assert spec.head_dim in (64, 128), spec.name
        assert set(spec.quantizations) <= {"awq"}, spec.name
        assert spec.dtype == "bfloat16", spec.name
        # Qwen3 heads are wider than hidden/heads; the others match it exactly.
        if "Qwen3" not in spec.llm:
            assert spec.heads * spec.head_dim == spec.hidden_size, spec.name
        if spec.moe is not None:
            assert spec.moe.active_params_b < spec.params_b, spec.name


def test_catalog_spec_accepts_dotted_and_hub_names() -> None:
    assert catalog_spec("OpenGVLab/InternVL3.5-8B").name == "InternVL3_5-8B"
    assert catalog_spec("internvl3-78b").layers == 80
    with pytest.raises(KeyError, match="not in the model catalogue"):
        catalog_spec("InternVL9-1B")


def test_checkpoint_spec_reads_the_tiny_models_config_and_weights(tiny_model_dir: Path) -> None:
    spec = checkpoint_spec(tiny_model_dir)
    config = json.loads((tiny_model_dir / "config.json").read_text())["text_config"]
    assert (spec.layers, spec.hidden_size, spec.heads, spec.kv_heads, spec.head_dim) == (
        config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
        config["num_key_value_heads"], 64)
    assert spec.max_context == config["max_position_embeddings"]
    from transformers import InternVLForConditionalGeneration

    model = InternVLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for name, p in model.named_parameters()
                 if "vision_tower" in name or "multi_modal_projector" in name)
    assert spec.params_b * 1e9 == pytest.approx(total)
    assert spec.vision_params_b * 1e9 == pytest.approx(vision)
    assert spec.path == tiny_model_dir and spec.quantizations == ()


def test_checkpoint_spec_reads_the_original_layout_and_awq_weights(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    config = {"architectures": ["InternVLChatModel"], "torch_dtype": "bfloat16",
              "llm_config": {"architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 2,
                             "hidden_size": 256, "num_attention_heads": 2,
                             "num_key_value_heads": 1, "vocab_size": 100,
                             "max_position_embeddings": 1024},
              "vision_config": {"image_size": 448, "patch_size": 14},
              "quantization_config": {"quant_method": "awq", "bits": 4}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({"vision_model.w": torch.zeros(10, 10), "mlp1.0.weight": torch.zeros(5),
               "language_model.layers.0.q.qweight": torch.zeros(4, 2, dtype=torch.int32),
               "language_model.layers.0.q.scales": torch.zeros(2, 2, dtype=torch.float16),
               "language_model.lm_head.weight": torch.zeros(100, 2)},
              str(tmp_path / "model.safetensors"))
    spec = checkpoint_spec(tmp_path, "mine")
    assert spec.name == "mine" and spec.head_dim == 128 and spec.quantizations == ("awq",)
    assert spec.params_b * 1e9 == 100 + 5 + 4 * 2 * 8 + 200
    assert spec.vision_params_b * 1e9 == 105
    assert spec.llm == "Qwen2ForCausalLM"


def test_resolve_spec_falls_back_to_the_catalogue_without_a_checkpoint(tmp_path: Path) -> None:
    assert resolve_spec("InternVL3-8B", tmp_path / "missing").name == "InternVL3-8B"
