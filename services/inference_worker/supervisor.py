"""Inference entrypoint: plan GPU placement, run one Celery worker per replica, keep them up.

`python -m services.inference_worker.supervisor` reads the models to serve (SUPERVISOR_MODELS, or
one model from MODEL_NAME / MODEL_PATH), the node's GPUs (NVML, or GPU_INVENTORY), plans replicas
with `placement.plan_placement`, and starts each replica as its own Celery worker on its model's
queue, pinned to its GPUs. A replica that exits is restarted with exponential backoff; after
SUPERVISOR_MAX_FAST_CRASHES consecutive quick deaths the supervisor stops everything and exits 1,
so compose or Kubernetes shows the failure. A replica whose heartbeat file (written while its work
progresses) goes stale is killed and restarted. Replicas die with the supervisor (Linux parent-death
signal, and a parent watch), and a restarted supervisor first kills any replica left from before
(pid files in SUPERVISOR_STATE_DIR), so replicas never double up. The supervisor touches its own
HEARTBEAT_FILE while its loop runs (what the container's liveness probe reads). SIGTERM/SIGINT
are forwarded to every worker (Celery's warm shutdown finishes running tasks) and the supervisor
exits once they have.

The same entrypoint serves both deployments: on a docker-compose GPU host it sees every GPU and
runs every replica; in Kubernetes a pod sees only the GPUs it requested (ids from 0), so a model
entry with `"replicas": 1` in a pod sized to its TP runs exactly one replica per pod. With no GPU
it runs one CPU replica per model on the transformers engine.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import FrameType
from typing import Literal

from pydantic import BaseModel, Field, TypeAdapter

from services.inference_worker.catalog import resolve_spec
from services.inference_worker.inventory import detect_gpus
from services.inference_worker.placement import GPU, ModelDemand, Plan, plan_placement
from shared.process_health import PARENT_PID_ENV, heartbeat_age, touch_heartbeat
from shared.queues import inference_queue
from shared.settings import BaseServiceSettings

log = logging.getLogger(__name__)

CommandFactory = Callable[[str, str], list[str]]
DEFAULT_CONTEXT_LENGTH = 8192


class ModelEntry(BaseModel):
    """One model to serve, as SUPERVISOR_MODELS lists it."""

    name: str
    path: Path
    quantization: Literal["bf16", "awq"] | None = None
    context_length: int | None = Field(default=None, ge=1)
    concurrency: int = Field(default=1, ge=1)
    kv_quant_bits: Literal[16, 8, 4] = 16
    replicas: int | None = Field(default=None, ge=1)
    engine: Literal["transformers", "lmdeploy"] | None = None
    # Settings this model's replicas get (InferenceSettings of the same names); unset: the
    # replica's own. Engine knobs, and the inference time budget.
    max_batch_size: int | None = Field(default=None, ge=1)
    vision_batch_size: int | None = Field(default=None, ge=1)
    system_message: str | None = None
    timeout_base_seconds: float | None = Field(default=None, gt=0)
    timeout_per_token_seconds: float | None = Field(default=None, ge=0)

    def replica_env(self) -> dict[str, str]:
        """The settings this entry sets for its replicas."""
        knobs = {"MAX_BATCH_SIZE": self.max_batch_size,
                 "VISION_BATCH_SIZE": self.vision_batch_size,
                 "SYSTEM_MESSAGE": self.system_message,
                 "INFERENCE_TIMEOUT_BASE_SECONDS": self.timeout_base_seconds,
                 "INFERENCE_TIMEOUT_PER_TOKEN_SECONDS": self.timeout_per_token_seconds}
        return {name: str(value) for name, value in knobs.items() if value is not None}


class SupervisorSettings(BaseServiceSettings):
    """Settings of the inference supervisor (the workers it starts read their own)."""

    OTEL_SERVICE_NAME: str = "inference-supervisor"
    # A JSON list of ModelEntry objects; unset means the one model below.
    SUPERVISOR_MODELS: str | None = None
    MODEL_NAME: str = "tiny-internvl"
    MODEL_PATH: Path = Path(".models/tiny-internvl")
    # "8x80", "0:80,1:24" or "none"; unset means ask NVML.
    GPU_INVENTORY: str | None = None
    SUPERVISOR_RESTART_BACKOFF_SECONDS: float = Field(default=1.0, gt=0)
    SUPERVISOR_MAX_BACKOFF_SECONDS: float = Field(default=60.0, gt=0)
    # A worker that dies sooner than this after starting counts as a fast crash.
    SUPERVISOR_FAST_CRASH_SECONDS: float = Field(default=60.0, gt=0)
    SUPERVISOR_MAX_FAST_CRASHES: int = Field(default=5, ge=1)
    # Warm shutdown waits for running jobs: as long as the longest job (compose's grace period).
    SUPERVISOR_STOP_TIMEOUT_SECONDS: float = Field(default=900.0, gt=0)
    # Pid files and heartbeat files of the replicas (one directory per supervisor).
    SUPERVISOR_STATE_DIR: Path = Path(tempfile.gettempdir()) / "tessera-supervisor"
    # A replica whose heartbeat is older than this is wedged: it is killed and restarted.
    SUPERVISOR_HEARTBEAT_STALE_SECONDS: float = Field(default=180.0, gt=0)
    # How long a new replica may take to beat for the first time (loading its model).
    SUPERVISOR_STARTUP_SECONDS: float = Field(default=1800.0, gt=0)

    def model_entries(self) -> list[ModelEntry]:
        """The models to serve: SUPERVISOR_MODELS, else MODEL_NAME at MODEL_PATH."""
        if self.SUPERVISOR_MODELS:
            return TypeAdapter(list[ModelEntry]).validate_json(self.SUPERVISOR_MODELS)
        return [ModelEntry(name=self.MODEL_NAME, path=self.MODEL_PATH)]


@lru_cache
def get_settings() -> SupervisorSettings:
    """The supervisor's settings, read once from the environment."""
    return SupervisorSettings()


@dataclass(frozen=True)
class WorkerSpec:
    """One process to keep running: its name, command and the environment it adds."""

    name: str
    command: list[str]
    env: dict[str, str]


def celery_command(hostname: str, queue: str) -> list[str]:
    """The Celery worker command of one replica; pool and concurrency come from its settings."""
    return [sys.executable, "-m", "celery", "-A", "services.inference_worker.celery_app",
            "worker", "--hostname", hostname, "--queues", queue, "--loglevel", "INFO"]


def model_demand(entry: ModelEntry) -> ModelDemand:
    """The placement demand of an entry, its spec from the checkpoint or else the catalogue."""
    spec = resolve_spec(entry.name, entry.path)
    quantization = entry.quantization or (
        "awq" if spec.path is not None and "awq" in spec.quantizations else "bf16")
    context = entry.context_length or min(DEFAULT_CONTEXT_LENGTH,
                                          spec.max_context or DEFAULT_CONTEXT_LENGTH)
    return ModelDemand(entry.name, spec, quantization, context, entry.concurrency,
                       entry.kv_quant_bits, entry.replicas)


def build_workers(entries: Sequence[ModelEntry], gpus: list[GPU],
                  command_factory: CommandFactory = celery_command,
                  ) -> tuple[Plan | None, list[WorkerSpec]]:
    """The plan (None on a CPU-only host) and one worker per replica, pinned to its GPUs."""
    if not gpus:
        workers = []
        for entry in entries:
            if entry.engine == "lmdeploy":
                raise ValueError(f"{entry.name}: LMDeploy needs a GPU and this host has none")
            env = {"MODEL_NAME": entry.name, "MODEL_PATH": str(entry.path),
                   "ENGINE": "transformers", "DEVICE": "cpu", "TP": "1", "GPU_IDS": "",
                   "CUDA_VISIBLE_DEVICES": "", **entry.replica_env()}
            workers.append(WorkerSpec(f"{entry.name}-r0", command_factory(
                f"{entry.name}-r0@%h", inference_queue(entry.name)), env))
        return None, workers
    demands = [model_demand(entry) for entry in entries]
    plan = plan_placement(gpus, demands)
    by_name = {entry.name: entry for entry in entries}
    workers = []
    for model in plan.models:
        entry, demand = by_name[model.demand.name], model.demand
        engine = entry.engine or "lmdeploy"
        if engine == "transformers" and model.tp > 1:
            raise ValueError(f"{entry.name}: the transformers engine cannot run TP {model.tp}")
        for replica in model.replicas:
            ids = ",".join(map(str, replica.gpu_ids))
            env = {"MODEL_NAME": entry.name, "MODEL_PATH": str(entry.path), "ENGINE": engine,
                   "TP": str(replica.tp), "GPU_IDS": ids, "CUDA_VISIBLE_DEVICES": ids,
                   # CUDA numbers GPUs fastest-first by default; NVML (our ids) by PCI bus.
                   "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                   "SESSION_LEN": str(demand.context_length),
                   "KV_QUANT_POLICY": str(0 if demand.kv_quant_bits == 16
                                          else demand.kv_quant_bits), **entry.replica_env()}
            if engine == "transformers":
                env["DEVICE"] = "cuda"
            if demand.quantization == "awq":
                env["MODEL_FORMAT"] = "awq"
            name = f"{entry.name}-r{replica.index}"
            workers.append(WorkerSpec(name, command_factory(
                f"{name}@%h", inference_queue(entry.name)), env))
    return plan, workers


class SupervisorGaveUp(RuntimeError):
    """A worker kept dying right after it started."""


@dataclass
class _Slot:
    spec: WorkerSpec
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    fast_crashes: int = 0
    restart_at: float | None = None


class ProcessSupervisor:
    """Keeps a fixed set of worker processes running; stops them with SIGTERM and waits."""

    def __init__(self, workers: Sequence[WorkerSpec], *, backoff_seconds: float = 1.0,
                 max_backoff_seconds: float = 60.0, fast_crash_seconds: float = 60.0,
                 max_fast_crashes: int = 5, stop_timeout_seconds: float = 900.0,
                 state_dir: Path | None = None, heartbeat_stale_seconds: float = 180.0,
                 startup_seconds: float = 1800.0) -> None:
        self._slots = [_Slot(spec) for spec in workers]
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.fast_crash_seconds = fast_crash_seconds
        self.max_fast_crashes = max_fast_crashes
        self.stop_timeout_seconds = stop_timeout_seconds
        self.state_dir = state_dir
        self.heartbeat_stale_seconds = heartbeat_stale_seconds
        self.startup_seconds = startup_seconds

    def pids(self) -> dict[str, int | None]:
        """Each worker's current process id (None while it waits to restart)."""
        return {slot.spec.name: slot.process.pid if slot.process else None
                for slot in self._slots}

    def start(self) -> None:
        """Start every worker, after killing any left running by a supervisor before us."""
        for slot in self._slots:
            self._kill_leftover(slot)
            self._spawn(slot)

    def poll(self) -> None:
        """Notice exited workers, schedule their restart, and restart those whose wait is over."""
        now = time.monotonic()
        for slot in self._slots:
            if slot.process is not None:
                code = slot.process.poll()
                if code is None:
                    self._kill_if_wedged(slot, now)
                    continue
                lived = now - slot.started_at
                slot.process = None
                slot.fast_crashes = slot.fast_crashes + 1 if lived < self.fast_crash_seconds else 0
                if slot.fast_crashes >= self.max_fast_crashes:
                    raise SupervisorGaveUp(
                        f"{slot.spec.name} died {slot.fast_crashes} times in a row within "
                        f"{self.fast_crash_seconds:g} s of starting (last exit code {code})")
                delay = min(self.max_backoff_seconds,
                            self.backoff_seconds * 2 ** max(0, slot.fast_crashes - 1))
                log.warning("%s exited with code %s after %.1f s; restarting in %.1f s",
                            slot.spec.name, code, lived, delay)
                slot.restart_at = now + delay
            if slot.restart_at is not None and now >= slot.restart_at:
                self._spawn(slot)

    def stop(self) -> None:
        """SIGTERM every worker, wait for them to finish, SIGKILL any still alive at the timeout."""
        running = [slot for slot in self._slots if slot.process is not None]
        for slot in running:
            assert slot.process is not None
            log.info("sending SIGTERM to %s (pid %d)", slot.spec.name, slot.process.pid)
            slot.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_seconds
        for slot in running:
            assert slot.process is not None
            try:
                slot.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s did not stop within %.0f s; killing it", slot.spec.name,
                          self.stop_timeout_seconds)
                slot.process.kill()
                slot.process.wait()
            log.info("%s stopped with code %s", slot.spec.name, slot.process.returncode)
            slot.process = None
        for slot in self._slots:
            slot.restart_at = None

    def run(self, stop: threading.Event, poll_seconds: float = 0.5,
            heartbeat: Path | None = None) -> int:
        """Start the workers, keep them up until `stop` is set; 0 when stopped, 1 on giving up.
        Touches heartbeat at every round (the supervisor's own liveness)."""
        self.start()
        try:
            while not stop.wait(poll_seconds):
                self.poll()
                if heartbeat is not None:
                    touch_heartbeat(heartbeat)
        except SupervisorGaveUp as error:
            log.error("giving up: %s", error)
            return 1
        finally:
            self.stop()
        return 0

    def _heartbeat_file(self, slot: _Slot) -> Path | None:
        return None if self.state_dir is None else self.state_dir / f"{slot.spec.name}.heartbeat"

    def _pid_file(self, slot: _Slot) -> Path | None:
        return None if self.state_dir is None else self.state_dir / f"{slot.spec.name}.pid"

    def _kill_if_wedged(self, slot: _Slot, now: float) -> None:
        """SIGKILL a worker whose work stopped progressing (its exit then restarts it)."""
        beat = self._heartbeat_file(slot)
        if beat is None or slot.process is None:
            return
        age = heartbeat_age(beat)
        # Before its first beat a worker is loading its model, for up to startup_seconds.
        wedged = (age > self.heartbeat_stale_seconds if age is not None
                  else now - slot.started_at > self.startup_seconds)
        if wedged:
            log.error("%s (pid %d) stopped making progress (heartbeat %s s old); killing it",
                      slot.spec.name, slot.process.pid, "never" if age is None else f"{age:.0f}")
            slot.process.kill()

    def _kill_leftover(self, slot: _Slot) -> None:
        """Kill the worker of this slot that an earlier supervisor left running (it consumes
        the same queue and holds the same GPUs); its pid file names it."""
        pid_file = self._pid_file(slot)
        if pid_file is None or not pid_file.exists():
            return
        pid = int(pid_file.read_text().strip() or 0)
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return  # gone already (or not Linux: its parent watch ends it)
        if f"{slot.spec.name}@" not in command:
            return  # the pid was reused by an unrelated process
        log.warning("killing %s (pid %d) left running by an earlier supervisor", slot.spec.name,
                    pid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _spawn(self, slot: _Slot) -> None:
        env = {**os.environ, **slot.spec.env, PARENT_PID_ENV: str(os.getpid())}
        beat, pid_file = self._heartbeat_file(slot), self._pid_file(slot)
        if beat is not None:
            beat.unlink(missing_ok=True)
            env["HEARTBEAT_FILE"] = str(beat)
        # A session of its own: a terminal's Ctrl-C reaches the worker only through us, once.
        # The command comes from our own factory and settings, never from a request.
        slot.process = subprocess.Popen(slot.spec.command, env=env,  # noqa: S603
                                        start_new_session=True)
        if pid_file is not None:
            pid_file.parent.mkdir(parents=True, exist_ok=True)
            pid_file.write_text(str(slot.process.pid))
        slot.started_at = time.monotonic()
        slot.restart_at = None
        log.info("started %s (pid %d): %s %s", slot.spec.name, slot.process.pid,
                 " ".join(f"{key}={value}" for key, value in sorted(slot.spec.env.items())),
                 " ".join(slot.spec.command))


def _running(pid: int) -> bool:
    """True while pid exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def main(command_factory: CommandFactory = celery_command) -> int:
    """Plan, start the workers and supervise them until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s supervisor: %(message)s")
    settings = get_settings()
    gpus = detect_gpus(settings.GPU_INVENTORY)
    log.info("GPUs: %s", ", ".join(f"{gpu.id}:{gpu.memory_gb:.0f}GB" for gpu in gpus) or "none")
    plan, workers = build_workers(settings.model_entries(), gpus, command_factory)
    if plan is not None:
        log.info("placement plan:\n%s", plan.explain())
    supervisor = ProcessSupervisor(
        workers, backoff_seconds=settings.SUPERVISOR_RESTART_BACKOFF_SECONDS,
        max_backoff_seconds=settings.SUPERVISOR_MAX_BACKOFF_SECONDS,
        fast_crash_seconds=settings.SUPERVISOR_FAST_CRASH_SECONDS,
        max_fast_crashes=settings.SUPERVISOR_MAX_FAST_CRASHES,
        stop_timeout_seconds=settings.SUPERVISOR_STOP_TIMEOUT_SECONDS,
        state_dir=settings.SUPERVISOR_STATE_DIR,
        heartbeat_stale_seconds=settings.SUPERVISOR_HEARTBEAT_STALE_SECONDS,
        startup_seconds=settings.SUPERVISOR_STARTUP_SECONDS)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping workers", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return supervisor.run(stop, heartbeat=settings.HEARTBEAT_FILE)


if __name__ == "__main__":
    sys.exit(main())
