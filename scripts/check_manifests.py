"""Checks rendered Kubernetes manifests for what schema validation cannot see.

Run on the output of `kubectl kustomize` (scripts/validate_deploy.sh does, for every overlay):
KEDA and Karpenter objects against their CRD schemas (k8s/schemas), references between objects,
resources and security contexts of every container, GPU taint tolerations, and that every queue
the code defines is autoscaled. Exit status 1 and one line per problem when something is wrong.
"""

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from shared.queues import PREPROCESS_QUEUE, WEBHOOK_QUEUE, inference_queue  # noqa: E402

SCHEMA_DIR = ROOT / "k8s" / "schemas"
# Custom resources we write, by (apiVersion, kind); anything else from these groups is refused.
SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_v1alpha1_triggerauthentication.json",
    ("karpenter.sh/v1", "NodePool"): "karpenter.sh_v1_nodepool.json",
    ("karpenter.k8s.aws/v1", "EC2NodeClass"): "karpenter.k8s.aws_v1_ec2nodeclass.json",
}
CHECKED_GROUPS = ("keda.sh", "karpenter.sh", "karpenter.k8s.aws")
CLUSTER_SCOPED = {"Namespace", "NodePool", "EC2NodeClass", "ClusterRole", "ClusterRoleBinding"}
GPU = "nvidia.com/gpu"
# The taint every GPU node carries (DESIGN.md §8), besides any taint a NodePool here declares.
DEFAULT_GPU_TAINTS = [{"key": GPU, "effect": "NoSchedule"}]
# Celery's Redis priority lists: priority 0 is the queue itself, N is "queue:N" (sep ":").
PRIORITIES = range(1, 10)
POD_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}

Doc = dict[str, Any]


def load_documents(paths: Iterable[Path]) -> list[Doc]:
    """Every non-empty YAML document in the files."""
    docs: list[Doc] = []
    for path in paths:
        with path.open() as stream:
            docs.extend(doc for doc in yaml.safe_load_all(stream) if doc)
    return docs


def _name(doc: Doc) -> str:
    meta = doc.get("metadata", {})
    namespace = meta.get("namespace")
    return f"{doc.get('kind')}/{namespace + '/' if namespace else ''}{meta.get('name')}"


def _ns(doc: Doc) -> str | None:
    namespace = doc.get("metadata", {}).get("namespace")
    return None if namespace is None else str(namespace)


def _find(docs: list[Doc], kind: str, name: str, namespace: str | None) -> Doc | None:
    for doc in docs:
        meta = doc.get("metadata", {})
        if (doc.get("kind"), meta.get("name"), meta.get("namespace")) == (kind, name, namespace):
            return doc
    return None


def pod_spec(doc: Doc) -> Doc | None:
    """The pod spec inside a workload (or a bare Pod), else None."""
    if doc.get("kind") == "Pod":
        return doc.get("spec")
    path = POD_TEMPLATE_PATHS.get(str(doc.get("kind")))
    if path is None:
        return None
    node: Any = doc
    for key in path:
        node = node.get(key, {}) if isinstance(node, dict) else {}
    return node.get("spec") if isinstance(node, dict) else None


def _containers(spec: Doc) -> Iterator[Doc]:
    yield from spec.get("initContainers") or []
    yield from spec.get("containers") or []


def check_schemas(docs: list[Doc], schema_dir: Path = SCHEMA_DIR) -> list[str]:
    """KEDA and Karpenter objects against the vendored subsets of their CRD schemas."""
    import jsonschema  # only this check needs it

    problems = []
    for doc in docs:
        api_version = str(doc.get("apiVersion", ""))
        if api_version.split("/")[0] not in CHECKED_GROUPS:
            continue
        schema_file = SCHEMAS.get((api_version, str(doc.get("kind"))))
        if schema_file is None:
            problems.append(f"{_name(doc)}: no schema for {api_version} {doc.get('kind')}")
            continue
        schema = json.loads((schema_dir / schema_file).read_text())
        validator = jsonschema.Draft202012Validator(schema)
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            where = ".".join(str(part) for part in error.absolute_path) or "(root)"
            problems.append(f"{_name(doc)}: {where}: {error.message}")
    return problems


def check_scaling(docs: list[Doc]) -> list[str]:
    """ScaledObjects and HPAs target objects that exist, and sum Celery's priority lists."""
    problems = []
    scaled: set[tuple[str | None, str]] = set()
    for doc in docs:
        kind = doc.get("kind")
        if kind == "HorizontalPodAutoscaler":
            ref = doc["spec"]["scaleTargetRef"]
            if _find(docs, ref["kind"], ref["name"], _ns(doc)) is None:
                problems.append(f"{_name(doc)}: scales {ref['kind']} {ref['name']}, "
                                "which is not here")
            scaled.add((_ns(doc), ref["name"]))
        if kind != "ScaledObject":
            continue
        spec = doc["spec"]
        ref = spec["scaleTargetRef"]
        target_kind = ref.get("kind", "Deployment")
        if _find(docs, target_kind, ref["name"], _ns(doc)) is None:
            problems.append(f"{_name(doc)}: scales {target_kind} {ref['name']}, which is not here")
        scaled.add((_ns(doc), ref["name"]))
        triggers = spec.get("triggers", [])
        for trigger in triggers:
            auth = trigger.get("authenticationRef")
            if auth and auth.get("kind", "TriggerAuthentication") == "TriggerAuthentication" \
                    and _find(docs, "TriggerAuthentication", auth["name"], _ns(doc)) is None:
                problems.append(f"{_name(doc)}: trigger {trigger.get('name')} uses "
                                f"TriggerAuthentication {auth['name']}, which is not here")
        problems.extend(_check_sum(doc, triggers))
        problems.extend(_check_priority_lists(doc, triggers))
    for doc in docs:
        if (_ns(doc), doc.get("metadata", {}).get("name")) in scaled \
                and doc.get("kind") == "Deployment" and "replicas" in doc.get("spec", {}):
            problems.append(f"{_name(doc)}: sets spec.replicas, which its autoscaler owns "
                            "(every apply would reset it)")
    return problems


def _check_sum(doc: Doc, triggers: list[Doc]) -> list[str]:
    modifiers = doc["spec"].get("advanced", {}).get("scalingModifiers")
    if modifiers is None:
        if len(triggers) > 1:
            # Each trigger becomes its own HPA metric, and the HPA follows the largest one.
            return [f"{_name(doc)}: {len(triggers)} triggers without scalingModifiers are not "
                    "summed (the HPA takes the largest metric)"]
        return []
    names = {str(trigger["name"]) for trigger in triggers if trigger.get("name")}
    problems = []
    if len(names) != len(triggers):
        problems.append(f"{_name(doc)}: scalingModifiers need every trigger named, uniquely")
    formula = str(modifiers.get("formula", ""))
    terms = {term.strip() for term in formula.split("+")}
    if not terms <= names:
        problems.append(f"{_name(doc)}: formula {formula!r} is not a sum of trigger names")
    elif terms != names:
        problems.append(f"{_name(doc)}: formula leaves out {sorted(names - terms)}")
    if "target" not in modifiers:
        problems.append(f"{_name(doc)}: scalingModifiers without a target")
    return problems


def _check_priority_lists(doc: Doc, triggers: list[Doc]) -> list[str]:
    lists: set[str] = {str(trigger["metadata"]["listName"]) for trigger in triggers
                       if trigger.get("type") == "redis"
                       and "listName" in trigger.get("metadata", {})}
    problems = []
    for queue in sorted(name for name in lists if ":" not in name):
        missing = [f"{queue}:{p}" for p in PRIORITIES if f"{queue}:{p}" not in lists]
        if missing:
            problems.append(f"{_name(doc)}: reads {queue} but not its priority lists {missing}")
    return problems


def _gpu_taints(docs: list[Doc]) -> list[Doc]:
    taints = list(DEFAULT_GPU_TAINTS)
    for doc in docs:
        if doc.get("kind") == "NodePool":
            taints.extend(doc["spec"]["template"]["spec"].get("taints", []))
    return taints


def _tolerates(tolerations: list[Doc], taint: Doc) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") not in (None, "", taint.get("effect")):
            continue
        operator = toleration.get("operator", "Equal")
        if operator == "Exists" and toleration.get("key") in (None, "", taint["key"]):
            return True
        if operator == "Equal" and toleration.get("key") == taint["key"] \
                and toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def check_pods(docs: list[Doc]) -> list[str]:
    """Every container: requests and limits, non-root; every GPU pod tolerates the GPU taints."""
    problems = []
    taints = _gpu_taints(docs)
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        pod_security = spec.get("securityContext") or {}
        wants_gpu = False
        for container in _containers(spec):
            where = f"{_name(doc)} container {container.get('name')}"
            resources = container.get("resources") or {}
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(part) or {}):
                        problems.append(f"{where}: no {part}.{resource}")
            requested = (resources.get("requests") or {}).get(GPU)
            limited = (resources.get("limits") or {}).get(GPU)
            if requested is not None or limited is not None:
                wants_gpu = True
                if str(requested) != str(limited):
                    problems.append(f"{where}: {GPU} requests and limits differ")
            security = container.get("securityContext") or {}
            problems.extend(_check_security(where, pod_security, security))
        if wants_gpu:
            for taint in taints:
                if not _tolerates(spec.get("tolerations") or [], taint):
                    problems.append(f"{_name(doc)}: requests {GPU} but does not tolerate the taint "
                                    f"{taint['key']}={taint.get('value', '')}:{taint['effect']}")
    return problems


def _check_security(where: str, pod: Doc, container: Doc) -> list[str]:
    def setting(key: str) -> Any:
        return container.get(key, pod.get(key))

    problems = []
    if setting("runAsNonRoot") is not True:
        problems.append(f"{where}: runAsNonRoot is not true")
    if setting("runAsUser") == 0:
        problems.append(f"{where}: runs as UID 0")
    if container.get("privileged"):
        problems.append(f"{where}: privileged")
    if container.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: allowPrivilegeEscalation is not false")
    if "ALL" not in ((container.get("capabilities") or {}).get("drop") or []):
        problems.append(f"{where}: capabilities are not dropped (drop: [ALL])")
    return problems


def check_queues(docs: list[Doc]) -> list[str]:
    """Each queue the code uses is read by a ScaledObject; each served model has a worker."""
    problems = []
    for config in (doc for doc in docs if doc.get("kind") == "ConfigMap"
                   and "SERVED_MODELS" in (doc.get("data") or {})):
        namespace = _ns(config)
        models = [m.strip() for m in config["data"]["SERVED_MODELS"].split(",") if m.strip()]
        lists = {trigger["metadata"].get("listName")
                 for doc in docs if doc.get("kind") == "ScaledObject" and _ns(doc) == namespace
                 for trigger in doc["spec"].get("triggers", [])
                 if trigger.get("type") == "redis"}
        for queue in [PREPROCESS_QUEUE, WEBHOOK_QUEUE, *map(inference_queue, models)]:
            if queue not in lists:
                problems.append(f"{_name(config)}: no ScaledObject reads queue {queue!r}")
        served = {env.get("value") for doc in docs if doc.get("kind") == "Deployment"
                  and _ns(doc) == namespace
                  for container in (pod_spec(doc) or {}).get("containers", [])
                  for env in container.get("env") or [] if env.get("name") == "MODEL_NAME"}
        for model in models:
            if model not in served:
                problems.append(f"{_name(config)}: serves {model!r} but no Deployment runs it")
    return problems


def check_scope(docs: list[Doc]) -> list[str]:
    """Cluster-scoped kinds carry no namespace (kustomize stamps one on CRs it does not know)."""
    return [f"{_name(doc)}: cluster-scoped but has a namespace" for doc in docs
            if doc.get("kind") in CLUSTER_SCOPED and _ns(doc)]


def check_all(docs: list[Doc], schema_dir: Path = SCHEMA_DIR) -> list[str]:
    """Every check, in order."""
    return [*check_schemas(docs, schema_dir), *check_scaling(docs), *check_pods(docs),
            *check_queues(docs), *check_scope(docs)]


def main(argv: list[str] | None = None) -> int:
    """Check the rendered manifests named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rendered", nargs="+", type=Path, help="output of kubectl kustomize")
    args = parser.parse_args(argv)
    status = 0
    for path in args.rendered:
        problems = check_all(load_documents([path]))
        for problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)
        status |= bool(problems)
    return status


if __name__ == "__main__":
    sys.exit(main())
