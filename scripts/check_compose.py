"""Checks the resolved docker-compose file (`docker-compose --profile gpu config --format json`).

Every service folder with a Dockerfile is built by a compose service; the infrastructure the code
talks to is there (Redis with append-only persistence, MinIO and its buckets, a trace backend);
application services wait for healthy dependencies and have a health check; the `gpu` profile
reserves GPUs for the inference supervisor.
"""

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
INFRASTRUCTURE = ("redis", "minio", "minio-init")
TRACE_BACKENDS = ("jaeger", "otel-collector")
APP_DEPENDENCIES = {"redis": "service_healthy", "minio-init": "service_completed_successfully"}
SUPERVISOR = "services.inference_worker.supervisor"


def _has_healthcheck(service: dict[str, Any]) -> bool:
    if service.get("healthcheck", {}).get("disable"):
        return False
    if service.get("healthcheck", {}).get("test"):
        return True
    dockerfile = service.get("build", {}).get("dockerfile")
    return bool(dockerfile) and "\nHEALTHCHECK " in (ROOT / dockerfile).read_text()


def check_compose(config: dict[str, Any], root: Path = ROOT) -> list[str]:
    """Problems with a resolved compose configuration (empty when there are none)."""
    services: dict[str, dict[str, Any]] = config.get("services", {})
    problems = []
    for dockerfile in sorted(root.glob("services/*/Dockerfile")):
        relative = dockerfile.relative_to(root).as_posix()
        builders = [name for name, service in services.items()
                    if service.get("build", {}).get("dockerfile") == relative]
        expected = dockerfile.parent.name.replace("_", "-")
        if expected not in builders:
            problems.append(f"no compose service {expected!r} builds {relative}")
    for name in INFRASTRUCTURE:
        if name not in services:
            problems.append(f"no {name!r} service")
    if not any(name in services for name in TRACE_BACKENDS):
        problems.append(f"no trace backend (one of {TRACE_BACKENDS})")
    redis = services.get("redis", {})
    if "--appendonly" not in (redis.get("command") or []):
        problems.append("redis runs without --appendonly")
    for name, service in services.items():
        if "build" not in service:
            continue
        depends = service.get("depends_on", {})
        for dependency, condition in APP_DEPENDENCIES.items():
            if depends.get(dependency, {}).get("condition") != condition:
                problems.append(f"{name}: does not wait for {dependency} ({condition})")
        if not _has_healthcheck(service):
            problems.append(f"{name}: no health check")
    gpu = [name for name, service in services.items() if "gpu" in (service.get("profiles") or [])]
    if not gpu:
        problems.append("no service in the 'gpu' profile")
    for name in gpu:
        service = services[name]
        devices = (service.get("deploy", {}).get("resources", {}).get("reservations", {})
                   .get("devices") or [])
        if not any("gpu" in (device.get("capabilities") or []) for device in devices):
            problems.append(f"{name}: reserves no GPU")
        if SUPERVISOR not in " ".join(service.get("command") or []):
            problems.append(f"{name}: does not run {SUPERVISOR}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Check the resolved compose JSON named on the command line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: check_compose.py RESOLVED.json", file=sys.stderr)
        return 2
    problems = check_compose(json.loads(Path(args[0]).read_text()))
    for problem in problems:
        print(f"docker-compose.yml: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
