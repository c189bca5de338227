"""scripts/check_manifests.py and check_compose.py on small in-memory documents."""

import copy
from typing import Any

import pytest

pytest.importorskip("yaml")
pytest.importorskip("jsonschema")

from scripts.check_compose import check_compose
from scripts.check_manifests import (
    check_pods,
    check_queues,
    check_scaling,
    check_schemas,
    check_scope,
)

SECURE = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
RESOURCES: dict[str, dict[str, Any]] = {"requests": {"cpu": "1", "memory": "1Gi"},
                                        "limits": {"cpu": "1", "memory": "1Gi"}}


def deployment(name: str, *, gpu: bool = False, tolerate: bool = True,
               model: str | None = None) -> dict[str, Any]:
    resources = copy.deepcopy(RESOURCES)
    if gpu:
        resources["requests"]["nvidia.com/gpu"] = 1
        resources["limits"]["nvidia.com/gpu"] = 1
    container: dict[str, Any] = {"name": name, "image": "x", "resources": resources,
                                 "securityContext": dict(SECURE)}
    if model:
        container["env"] = [{"name": "MODEL_NAME", "value": model}]
    spec: dict[str, Any] = {"securityContext": {"runAsNonRoot": True}, "containers": [container]}
    if tolerate:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists",
                                "effect": "NoSchedule"}]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"template": {"spec": spec}}}


def scaled_object(target: str, queue: str, *, summed: bool = True,
                  priorities: range = range(1, 10)) -> dict[str, Any]:
    lists: list[str] = [queue, *(f"{queue}:{p}" for p in priorities)]
    triggers: list[dict[str, Any]] = [{"type": "redis", "name": f"p{i}",
                 "metadata": {"address": "redis:6379", "listName": name, "listLength": "1"},
                 "authenticationRef": {"name": "tessera-redis"}}
                for i, name in enumerate(lists)]
    spec: dict[str, Any] = {"scaleTargetRef": {"name": target}, "minReplicaCount": 0,
                            "triggers": triggers}
    if summed:
        spec["advanced"] = {"scalingModifiers": {
            "formula": " + ".join(t["name"] for t in triggers), "target": "8"}}
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": target}, "spec": spec}


AUTH = {"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
        "metadata": {"name": "tessera-redis"},
        "spec": {"secretTargetRef": [{"parameter": "password", "name": "s", "key": "k"}]}}


def test_valid_scaled_object_passes_schema_and_references() -> None:
    docs = [deployment("worker"), scaled_object("worker", "preprocess"), AUTH]
    assert check_schemas(docs) == []
    assert check_scaling(docs) == []


def test_scaled_object_with_unknown_field_fails_schema() -> None:
    bad = scaled_object("worker", "preprocess")
    bad["spec"]["coolDownPeriod"] = 30
    assert any("coolDownPeriod" in p for p in check_schemas([bad]))


def test_nodepool_with_bad_taint_effect_fails_schema() -> None:
    pool = {"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "gpu"},
            "spec": {"template": {"spec": {
                "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass",
                                 "name": "gpu"},
                "requirements": [],
                "taints": [{"key": "nvidia.com/gpu", "effect": "NoScheduled"}]}},
                "disruption": {"consolidateAfter": "2m"}}}
    assert any("taints" in p for p in check_schemas([pool]))


def test_scaled_object_must_target_an_existing_deployment() -> None:
    problems = check_scaling([scaled_object("missing", "preprocess"), AUTH])
    assert any("which is not here" in p for p in problems)


def test_unsummed_triggers_are_refused() -> None:
    docs = [deployment("w"), scaled_object("w", "preprocess", summed=False), AUTH]
    assert any("not summed" in p for p in check_scaling(docs))


def test_missing_priority_lists_are_reported() -> None:
    docs = [deployment("w"), scaled_object("w", "preprocess", priorities=range(1, 5)), AUTH]
    assert any("preprocess:9" in p for p in check_scaling(docs))


def test_replicas_on_an_autoscaled_deployment_are_reported() -> None:
    worker = deployment("w")
    worker["spec"]["replicas"] = 2
    assert any("spec.replicas" in p for p in check_scaling([worker, scaled_object("w", "q"), AUTH]))


def test_container_without_limits_or_non_root_is_reported() -> None:
    worker = deployment("w")
    del worker["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    worker["spec"]["template"]["spec"]["securityContext"] = {}
    problems = check_pods([worker])
    assert any("no limits.memory" in p for p in problems)
    assert any("runAsNonRoot" in p for p in problems)


def test_gpu_pod_must_tolerate_the_gpu_taint() -> None:
    assert check_pods([deployment("g", gpu=True)]) == []
    problems = check_pods([deployment("g", gpu=True, tolerate=False)])
    assert any("does not tolerate" in p for p in problems)


def test_every_served_model_needs_a_scaled_queue_and_a_worker() -> None:
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
              "data": {"SERVED_MODELS": "a,b"}}
    docs = [config, deployment("ia", model="a"), scaled_object("ia", "infer.a"),
            scaled_object("pre", "preprocess"), scaled_object("hooks", "webhooks")]
    problems = check_queues(docs)
    assert any("'infer.b'" in p for p in problems)
    assert any("serves 'b'" in p for p in problems)
    assert not any("'infer.a'" in p or "preprocess" in p for p in problems)


def test_cluster_scoped_objects_carry_no_namespace() -> None:
    pool = {"kind": "NodePool", "metadata": {"name": "gpu", "namespace": "tessera"}}
    assert check_scope([pool]) != []


def test_compose_needs_every_service_and_a_gpu_profile() -> None:
    problems = check_compose({"services": {"redis": {"command": ["redis-server"]}}})
    assert any("ingest-api" in p for p in problems)
    assert any("appendonly" in p for p in problems)
    assert any("'gpu' profile" in p for p in problems)
