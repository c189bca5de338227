"""The supervisor: workers pinned to their planned GPUs, restarted when they die, stopped warm."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from services.inference_worker.inventory import parse_inventory
from services.inference_worker.supervisor import (
    ModelEntry,
    ProcessSupervisor,
    SupervisorSettings,
    WorkerSpec,
    build_workers,
    celery_command,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# A stand-in worker: records its pinning, then idles until SIGTERM, which it logs before exiting.
FAKE_WORKER = """
import json, os, signal, sys, time
out = os.path.join(os.environ["FAKE_OUT"], sys.argv[1].split("@")[0])
keys = ("MODEL_NAME", "ENGINE", "TP", "GPU_IDS", "CUDA_VISIBLE_DEVICES")
with open(out + ".tmp", "w") as f:
    json.dump({k: os.environ.get(k) for k in keys} | {"queue": sys.argv[2]}, f)
os.replace(out + ".tmp", out + ".env")
def stop(*_):
    time.sleep(0.3)  # a running task finishing
    open(out + ".stopped", "w").close()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    time.sleep(0.05)
"""


def fake_factory(hostname: str, queue: str) -> list[str]:
    return [sys.executable, "-c", FAKE_WORKER, hostname, queue]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_each_replica_gets_its_gpus_model_and_queue() -> None:
    entries = [ModelEntry(name="InternVL3-78B", path=Path("/models/78b"), concurrency=32),
               ModelEntry(name="InternVL3-8B", path=Path("/models/8b"), concurrency=200,
                          quantization="awq", kv_quant_bits=8)]
    plan, workers = build_workers(entries, parse_inventory("8x80"))
    assert plan is not None
    by_name = {worker.name: worker for worker in workers}
    big = by_name["InternVL3-78B-r0"]
    assert big.env["TP"] == "4" and big.env["GPU_IDS"] == big.env["CUDA_VISIBLE_DEVICES"]
    assert big.env["ENGINE"] == "lmdeploy" and big.env["MODEL_PATH"] == "/models/78b"
    assert big.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and big.env["SESSION_LEN"] == "8192"
    assert big.command == celery_command("InternVL3-78B-r0@%h", "infer.InternVL3-78B")
    assert "--queues" in big.command and "--pool" not in big.command
    small = [w for w in workers if w.env["MODEL_NAME"] == "InternVL3-8B"]
    assert small and all(w.env["MODEL_FORMAT"] == "awq" and w.env["KV_QUANT_POLICY"] == "8"
                         for w in small)
    used = [gpu for w in workers for gpu in w.env["GPU_IDS"].split(",")]
    assert len(used) == len(set(used))


def test_cpu_host_runs_one_transformers_replica_per_model() -> None:
    entries = [ModelEntry(name="tiny-internvl", path=Path(".models/tiny-internvl"))]
    plan, workers = build_workers(entries, parse_inventory("none"))
    assert plan is None
    [worker] = workers
    assert worker.env["ENGINE"] == "transformers" and worker.env["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(ValueError, match="needs a GPU"):
        build_workers([ModelEntry(name="x", path=Path("x"), engine="lmdeploy")], [])


def test_settings_default_to_the_single_model_and_parse_a_model_list(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_NAME", "InternVL3-8B")
    monkeypatch.setenv("MODEL_PATH", "/models/8b")
    monkeypatch.delenv("SUPERVISOR_MODELS", raising=False)
    assert SupervisorSettings().model_entries() == [
        ModelEntry(name="InternVL3-8B", path=Path("/models/8b"))]
    monkeypatch.setenv("SUPERVISOR_MODELS", json.dumps(
        [{"name": "InternVL3-1B", "path": "/m/1b", "concurrency": 8, "replicas": 1}]))
    [entry] = SupervisorSettings().model_entries()
    assert (entry.name, entry.concurrency, entry.replicas) == ("InternVL3-1B", 8, 1)


def test_a_checkpoint_plans_within_its_own_context(tiny_model_dir: Path,
                                                  tmp_path: Path) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 4096  # below the default 8192
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(tiny_model_dir / "model.safetensors")
    entries = [ModelEntry(name="short-context", path=tmp_path, concurrency=4)]
    plan, [worker] = build_workers(entries, parse_inventory("1x24"))
    assert plan is not None and worker.env["SESSION_LEN"] == "4096"
    tiny = [ModelEntry(name="tiny-internvl", path=tiny_model_dir, concurrency=4)]
    assert build_workers(tiny, parse_inventory("1x24"))[1][0].env["SESSION_LEN"] == "8192"


def test_restarts_a_killed_worker_with_the_same_pinning(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_OUT", str(tmp_path))
    _, workers = build_workers([ModelEntry(name="InternVL3-8B", path=Path("/m"),
                                           concurrency=20)],
                               parse_inventory("2x24"), fake_factory)
    supervisor = ProcessSupervisor(workers, backoff_seconds=0.05, stop_timeout_seconds=5)
    supervisor.start()
    try:
        env_file = tmp_path / "InternVL3-8B-r0.env"
        wait_for(env_file.exists)
        pinned = json.loads(env_file.read_text())
        assert pinned["CUDA_VISIBLE_DEVICES"] == pinned["GPU_IDS"] == "0"
        assert pinned["queue"] == "infer.InternVL3-8B"
        first = supervisor.pids()["InternVL3-8B-r0"]
        assert first is not None
        env_file.unlink()
        os.kill(first, signal.SIGKILL)

        def restarted() -> bool:
            supervisor.poll()
            return supervisor.pids()["InternVL3-8B-r0"] not in (None, first)

        wait_for(restarted)
        wait_for(env_file.exists)
        assert json.loads(env_file.read_text())["CUDA_VISIBLE_DEVICES"] == "0"
    finally:
        supervisor.stop()


def test_gives_up_after_repeated_fast_crashes() -> None:
    crashing = WorkerSpec("bad-r0", [sys.executable, "-c", "raise SystemExit(3)"], {})
    supervisor = ProcessSupervisor([crashing], backoff_seconds=0.01, max_fast_crashes=3)
    started = time.monotonic()
    assert supervisor.run(threading.Event(), poll_seconds=0.02) == 1
    assert time.monotonic() - started < 10


def test_stop_sends_sigterm_and_waits_for_running_work(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_OUT", str(tmp_path))
    workers = [WorkerSpec(f"m-r{i}", fake_factory(f"m-r{i}@%h", "infer.m"), {})
               for i in range(2)]
    supervisor = ProcessSupervisor(workers, stop_timeout_seconds=5)
    stop = threading.Event()
    runner = threading.Thread(target=supervisor.run, args=(stop, 0.02))
    runner.start()
    wait_for(lambda: all((tmp_path / f"m-r{i}.env").exists() for i in range(2)))
    stop.set()
    runner.join(timeout=10)
    assert not runner.is_alive()
    assert all((tmp_path / f"m-r{i}.stopped").exists() for i in range(2))


def test_entrypoint_forwards_sigterm_to_its_workers(tmp_path: Path) -> None:
    script = ("import sys; from tests.unit.test_supervisor import fake_factory; "
              "from services.inference_worker.supervisor import main; "
              "sys.exit(main(fake_factory))")
    env = {**os.environ, "FAKE_OUT": str(tmp_path), "GPU_INVENTORY": "0:24,1:80",
           "SUPERVISOR_MODELS": json.dumps([
               {"name": "InternVL3-1B", "path": "/m/1b", "concurrency": 4},
               {"name": "InternVL3-38B", "path": "/m/38b", "quantization": "awq",
                "concurrency": 4}])}
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: all((tmp_path / f"{name}-r0.env").exists()
                             for name in ("InternVL3-1B", "InternVL3-38B")))
        pins = {name: json.loads((tmp_path / f"{name}-r0.env").read_text())["GPU_IDS"]
                for name in ("InternVL3-1B", "InternVL3-38B")}
        assert pins == {"InternVL3-1B": "0", "InternVL3-38B": "1"}
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert (tmp_path / "InternVL3-1B-r0.stopped").exists()
    assert (tmp_path / "InternVL3-38B-r0.stopped").exists()
    assert "placement plan" in stderr


# A stand-in worker with our worker's liveness: it dies with its parent (as every Celery worker
# started by the supervisor does) and beats its heartbeat file until it "wedges".
LIVELY_WORKER = """
import os, sys, time
from pathlib import Path
from shared.process_health import PARENT_PID_ENV, die_with_parent, touch_heartbeat
die_with_parent(int(os.environ[PARENT_PID_ENV]))
out = Path(os.environ["FAKE_OUT"]) / sys.argv[1].split("@")[0]
out.with_suffix(".pids").open("a").write(f"{os.getpid()}\\n")
beats = int(os.environ.get("FAKE_BEATS", "1000000"))
for _ in range(beats):
    touch_heartbeat(Path(os.environ["HEARTBEAT_FILE"]))
    time.sleep(0.05)
while True:  # wedged: alive, but no longer progressing
    time.sleep(0.05)
"""


def lively_factory(hostname: str, queue: str) -> list[str]:
    return [sys.executable, "-c", LIVELY_WORKER, hostname, queue]


def _alive(pid: int) -> bool:
    """True while pid runs (a zombie waiting for its parent to reap it does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _pids(tmp_path: Path, name: str) -> list[int]:
    path = tmp_path / f"{name}.pids"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_workers_die_with_a_killed_supervisor_and_a_new_one_does_not_double_up(
        tmp_path: Path) -> None:
    script = ("import sys; from tests.unit.test_supervisor import lively_factory; "
              "from services.inference_worker.supervisor import main; "
              "sys.exit(main(lively_factory))")
    env = {**os.environ, "FAKE_OUT": str(tmp_path), "GPU_INVENTORY": "none",
           "SUPERVISOR_STATE_DIR": str(tmp_path / "state"), "MODEL_NAME": "m"}
    first = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=env)
    try:
        wait_for(lambda: len(_pids(tmp_path, "m-r0")) == 1)
        [orphan] = _pids(tmp_path, "m-r0")
        first.kill()  # SIGKILL: no chance to stop its worker
        first.wait()
        wait_for(lambda: not _alive(orphan), timeout=5)
    finally:
        first.kill()
    second = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=env)
    try:
        wait_for(lambda: len(_pids(tmp_path, "m-r0")) == 2)
        assert [pid for pid in _pids(tmp_path, "m-r0") if _alive(pid)] == [
            _pids(tmp_path, "m-r0")[1]]
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=10)


def test_a_restarted_supervisor_kills_a_worker_left_from_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_OUT", str(tmp_path))
    # A worker that outlived its supervisor (one that does not die with its parent).
    spec = WorkerSpec("m-r0", fake_factory("m-r0@%h", "infer.m"), {})
    old = ProcessSupervisor([spec], state_dir=tmp_path / "state")
    old.start()
    leftover = old.pids()["m-r0"]
    assert leftover is not None
    wait_for((tmp_path / "m-r0.env").exists)  # running its own command by now
    new = ProcessSupervisor([spec], state_dir=tmp_path / "state", stop_timeout_seconds=5)
    new.start()
    try:
        assert not _alive(leftover)
        assert new.pids()["m-r0"] not in (None, leftover)
    finally:
        new.stop()
        with contextlib.suppress(ProcessLookupError):  # never leak it if the test failed
            os.kill(leftover, signal.SIGKILL)


def test_a_worker_whose_heartbeat_stops_is_killed_and_restarted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_OUT", str(tmp_path))
    monkeypatch.setenv("FAKE_BEATS", "5")  # progresses briefly, then wedges
    spec = WorkerSpec("m-r0", lively_factory("m-r0@%h", "infer.m"), {})
    supervisor = ProcessSupervisor([spec], backoff_seconds=0.05, stop_timeout_seconds=5,
                                   state_dir=tmp_path / "state", heartbeat_stale_seconds=0.5)
    supervisor.start()
    try:
        wait_for(lambda: len(_pids(tmp_path, "m-r0")) == 1)
        [wedged] = _pids(tmp_path, "m-r0")

        def replaced() -> bool:
            supervisor.poll()
            return len(_pids(tmp_path, "m-r0")) == 2

        wait_for(replaced)
        assert not _alive(wedged)
    finally:
        supervisor.stop()
