"""The placement planner: TP, replicas and GPU ids per model, and plans that cannot fit."""

import pytest

from services.inference_worker.catalog import ModelSpec, catalog_spec
from services.inference_worker.inventory import parse_inventory
from services.inference_worker.placement import (
    GPU,
    ModelDemand,
    PlacementError,
    kv_gb_per_token,
    plan_placement,
    readme_table,
    tp_candidates,
    weights_gb,
)


def node(count: int, memory_gb: float) -> list[GPU]:
    return [GPU(i, memory_gb) for i in range(count)]


def demand(name: str, quantization: str = "bf16", concurrency: int = 32,
           context_length: int = 8192, **kwargs: object) -> ModelDemand:
    return ModelDemand(name, catalog_spec(name), quantization, context_length,  # type: ignore[arg-type]
                       concurrency, **kwargs)  # type: ignore[arg-type]


def test_memory_model_matches_hand_computed_figures() -> None:
    spec = catalog_spec("InternVL3-8B")
    assert weights_gb(spec, "bf16") == pytest.approx(7.94e9 * 2 / 2**30)
    # 28 layers x 4 KV heads x 128 x 2 (K, V) x 2 bytes = 56 KiB per token.
    assert kv_gb_per_token(spec) * 2**30 == 28 * 4 * 128 * 2 * 2
    assert kv_gb_per_token(spec, 8) == kv_gb_per_token(spec) / 2
    assert kv_gb_per_token(spec, 4) == kv_gb_per_token(spec) / 4
    awq = weights_gb(spec, "awq")
    assert 5.0 < awq < 6.5  # vision + embeddings stay 16-bit, the rest ~0.52 byte


def test_tp_must_be_a_power_of_two_dividing_heads_and_kv_heads() -> None:
    assert tp_candidates(catalog_spec("InternVL3-8B"), 8) == [1, 2, 4]  # 28 heads, 4 KV
    assert tp_candidates(catalog_spec("InternVL3-9B"), 8) == [1, 2]  # 2 KV heads
    assert tp_candidates(catalog_spec("InternVL3-78B"), 8) == [1, 2, 4, 8]
    assert tp_candidates(catalog_spec("InternVL3-78B"), 3) == [1, 2]


def test_small_model_gets_one_replica_on_one_gpu_when_it_holds_the_concurrency() -> None:
    plan = plan_placement(node(8, 80), [demand("InternVL3-1B")])
    assert [(r.tp, r.gpu_ids) for r in plan.replicas] == [(1, (0,))]
    assert plan.models[0].served_concurrency == 32


def test_replicas_grow_to_the_concurrency_wanted_on_disjoint_gpus() -> None:
    plan = plan_placement(node(8, 24), [demand("InternVL3-8B", concurrency=200)])
    assert [(r.tp, r.gpu_ids) for r in plan.replicas] == [
        (2, (0, 1)), (2, (2, 3)), (2, (4, 5)), (2, (6, 7))]
    assert plan.models[0].served_concurrency == 200


def test_tp_is_raised_only_when_it_saves_gpus() -> None:
    # One 24 GB GPU holds 13 full 8K sequences of bf16 InternVL3-8B: 32 need 3 such replicas,
    # while TP 2 holds them all on 2 GPUs.
    plan = plan_placement(node(8, 24), [demand("InternVL3-8B")])
    assert [(r.tp, r.gpu_ids) for r in plan.replicas] == [(2, (0, 1))]
    plan = plan_placement(node(8, 24), [demand("InternVL3-8B", concurrency=13)])
    assert [(r.tp, r.gpu_ids) for r in plan.replicas] == [(1, (0,))]


def test_large_model_uses_the_tp_that_serves_most_with_fewest_gpus() -> None:
    plan = plan_placement(node(8, 80), [demand("InternVL3-78B")])
    assert [(r.tp, r.gpu_ids) for r in plan.replicas] == [(4, (0, 1, 2, 3))]
    plan = plan_placement(node(8, 141), [demand("InternVL3-78B")])
    assert [(r.tp, r.gpu_ids) for r in plan.replicas] == [(2, (0, 1))]


def test_partial_concurrency_is_served_and_reported_when_gpus_run_out() -> None:
    plan = plan_placement(node(1, 24), [demand("InternVL3-8B")])
    model = plan.models[0]
    assert len(plan.replicas) == 1 and model.wanted_replicas > 1
    assert 0 < model.served_concurrency < 32
    assert f"{model.served_concurrency}/32" in plan.explain()


def test_kv_quantisation_raises_the_sequences_a_replica_holds() -> None:
    full = plan_placement(node(1, 24), [demand("InternVL3-8B")]).replicas[0].sequences
    int8 = plan_placement(node(1, 24), [demand("InternVL3-8B", kv_quant_bits=8)]).replicas[0]
    assert int8.sequences >= 2 * full - 1


def test_awq_fits_where_bf16_does_not() -> None:
    with pytest.raises(PlacementError):
        plan_placement(node(1, 80), [demand("InternVL3-78B")])
    plan = plan_placement(node(1, 80), [demand("InternVL3-78B", "awq")])
    assert plan.replicas[0].gpu_ids == (0,)


def test_impossible_model_names_itself_and_the_memory_short() -> None:
    with pytest.raises(PlacementError) as caught:
        plan_placement(node(1, 24), [demand("InternVL3-78B")])
    [shortfall] = caught.value.shortfalls
    assert shortfall.model == "InternVL3-78B"
    # ~146 GB of weights + 2 GB overhead + one 8K sequence on a 24 GB GPU.
    assert 120 < shortfall.short_gb < 130
    assert "InternVL3-78B" in str(caught.value) and "GB short" in str(caught.value)


def test_heads_limit_tp_and_so_whether_a_model_fits() -> None:
    # 2 KV heads: TP 2 at most even on 8 GPUs, and 2 x 8 GB cannot hold bf16 9B.
    spec = catalog_spec("InternVL3-9B")
    assert tp_candidates(spec, 8)[-1] == 2
    with pytest.raises(PlacementError, match="TP 2"):
        plan_placement(node(8, 8), [demand("InternVL3-9B")])


def test_several_models_are_packed_without_sharing_a_gpu() -> None:
    demands = [demand(name) for name in
               ("InternVL3-78B", "InternVL3-38B", "InternVL3-8B", "InternVL3-1B")]
    plan = plan_placement(node(8, 80), demands)
    used = [gpu for replica in plan.replicas for gpu in replica.gpu_ids]
    assert len(used) == len(set(used)) <= 8
    assert {r.model for r in plan.replicas} == {d.name for d in demands}


def test_every_model_gets_a_replica_before_any_gets_a_second() -> None:
    demands = [demand("InternVL3-8B", concurrency=20), demand("InternVL3-1B", concurrency=1)]
    plan = plan_placement(node(2, 24), demands)
    assert plan.models[0].wanted_replicas == 2
    assert [(r.model, r.gpu_ids) for r in plan.replicas] == [("InternVL3-8B", (0,)),
                                                             ("InternVL3-1B", (1,))]
    plan = plan_placement(node(3, 24), demands)
    assert [r.model for r in plan.replicas].count("InternVL3-8B") == 2


def test_models_that_lose_the_gpus_to_earlier_models_are_reported() -> None:
    demands = [demand("InternVL3-78B"), demand("InternVL3-8B"), demand("InternVL3-1B")]
    with pytest.raises(PlacementError) as caught:
        plan_placement(node(2, 80), demands)
    assert [s.model for s in caught.value.shortfalls] == ["InternVL3-8B", "InternVL3-1B"]
    assert all(s.short_gb > 0 for s in caught.value.shortfalls)


def test_best_fit_puts_a_small_model_on_the_small_gpu() -> None:
    gpus = parse_inventory("0:80,1:24")
    plan = plan_placement(gpus, [demand("InternVL3-1B"), demand("InternVL3-38B", "awq")])
    assert {r.model: r.gpu_ids for r in plan.replicas} == {"InternVL3-1B": (1,),
                                                           "InternVL3-38B": (0,)}


def test_explicit_replicas_are_placed_or_the_plan_fails() -> None:
    plan = plan_placement(node(4, 80), [demand("InternVL3-8B", replicas=3)])
    assert [r.gpu_ids for r in plan.replicas] == [(0,), (1,), (2,)]
    with pytest.raises(PlacementError, match="5 replicas asked, 4 fit"):
        plan_placement(node(4, 80), [demand("InternVL3-8B", replicas=5)])


def test_no_gpus_cannot_place_anything() -> None:
    with pytest.raises(PlacementError, match="no GPUs"):
        plan_placement([], [demand("InternVL3-1B")])


def test_demands_are_validated() -> None:
    with pytest.raises(ValueError, match="head_dim 128"):
        demand("InternVL3-1B", kv_quant_bits=8)  # head_dim 64
    with pytest.raises(ValueError, match="exceeds"):
        demand("InternVL3-8B", context_length=100_000)
    with pytest.raises(ValueError, match="unique"):
        plan_placement(node(2, 80), [demand("InternVL3-1B"), demand("InternVL3-1B")])


def test_tiny_models_need_little() -> None:
    spec = ModelSpec("tiny", 0.001, 0.0005, 2, 128, 2, 1, 64, 1024, 4096)
    plan = plan_placement(node(1, 4), [ModelDemand("tiny", spec, context_length=4096)])
    assert plan.replicas[0].gpu_ids == (0,)


def test_readme_table_has_every_node_and_model() -> None:
    table = readme_table()
    assert table.count("\n| InternVL3-") == 8  # four models, bf16 and AWQ
    for header in ("1x24 GB", "1x80 GB", "8x80 GB", "8x141 GB"):
        assert header in table
    assert "✗" in table and "TP 4" in table


@pytest.mark.parametrize(("text", "expected"), [
    ("none", []), ("", []),
    ("2x80", [GPU(0, 80), GPU(1, 80)]),
    ("0:80, 3:24.5", [GPU(0, 80), GPU(3, 24.5)]),
    ("1x141,2x24", [GPU(0, 141), GPU(1, 24), GPU(2, 24)]),
])
def test_inventory_override_forms(text: str, expected: list[GPU]) -> None:
    assert parse_inventory(text) == expected


def test_inventory_override_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="COUNTxGB"):
        parse_inventory("eight GPUs")
    with pytest.raises(ValueError, match="twice"):
        parse_inventory("0:80,0:24")
