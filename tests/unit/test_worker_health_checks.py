"""Deployments check a worker by its own progress: the heartbeat file its work loop writes."""

from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

REPO_ROOT = Path(__file__).resolve().parents[2]
HEARTBEAT = "/tmp/tessera-heartbeat"
WORKER_MANIFESTS = ["k8s/base/preprocess-worker.yaml", "k8s/base/webhook-worker.yaml",
                    "k8s/inference-model/inference-worker.yaml"]


def _containers(path: str) -> list[dict[str, Any]]:
    documents = yaml.safe_load_all((REPO_ROOT / path).read_text())
    return [container for document in documents if document["kind"] == "Deployment"
            for container in document["spec"]["template"]["spec"]["containers"]]


@pytest.mark.parametrize("path", WORKER_MANIFESTS)
def test_kubernetes_liveness_reads_the_age_of_the_heartbeat_file(path: str) -> None:
    [container] = _containers(path)
    probe = " ".join(container["livenessProbe"]["exec"]["command"])
    # No fallback that passes while the file is missing, and nothing that asks the broker.
    assert HEARTBEAT in probe and "date +%s" in probe
    assert "kill -0" not in probe and "celery" not in probe
    assert "startupProbe" in container


def test_every_kubernetes_worker_is_told_where_to_beat() -> None:
    config = (REPO_ROOT / "k8s/base/tessera-config.env").read_text().splitlines()
    assert f"HEARTBEAT_FILE={HEARTBEAT}" in config


def test_compose_restarts_workers_and_checks_their_heartbeat() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("preprocess-worker", "webhook-worker", "inference-worker",
                 "inference-worker-gpu"):
        service = services[name]
        assert service["restart"] == "unless-stopped"
        assert service["environment"]["HEARTBEAT_FILE"] == HEARTBEAT
        assert HEARTBEAT in " ".join(service["healthcheck"]["test"])
    # A crash of Redis loses nothing it acknowledged (accepted jobs, queued tasks).
    assert services["redis"]["command"][-2:] == ["--appendfsync", "always"]
