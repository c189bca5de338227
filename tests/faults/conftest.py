"""The fault suite's system: its own persistent Redis, S3 as a moto server process (so it can
be frozen), both APIs, the workers and a second inference replica, kept up by the launcher."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.localstack import BIN, LocalStack
from shared.job_store import JobStore
from shared.settings import WebhookSigningSettings
from tests.faults.harness import REPORT, RedisServer, wait_until
from tests.webhook_receiver import WebhookReceiver

# The supervisor's replica and one more started on its own (the one frozen in a test).
SUPERVISED_REPLICA = "tiny-internvl-r0@"
SECOND_REPLICA = "tiny-internvl-r1@"


@pytest.fixture(scope="session")
def fault_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server with append-only persistence on a free port."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def receiver() -> Iterator[WebhookReceiver]:
    """Verifies every delivery with the standardwebhooks package."""
    secret = WebhookSigningSettings().WEBHOOK_SECRET.get_secret_value()
    with WebhookReceiver(secret) as hooks:
        yield hooks


@pytest.fixture(scope="session")
def fault_stack(fault_redis: RedisServer, tiny_model_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The whole system on the suite's Redis, with short leases and timeouts so that every
    recovery path runs within seconds."""
    stack = LocalStack(
        work_dir=tmp_path_factory.mktemp("fault-stack"), redis_url=fault_redis.url,
        model_path=tiny_model_dir, key_prefix="faults", heartbeat_stale_seconds=30,
        extra_env={"LEASE_SECONDS": "6", "WEBHOOK_TIMEOUT_SECONDS": "3",
                   "WEBHOOK_BACKOFF_BASE_SECONDS": "0.2", "WEBHOOK_BACKOFF_MAX_SECONDS": "1",
                   "PREPARED_CACHE": "false", "SUPERVISOR_HEARTBEAT_STALE_SECONDS": "30",
                   "SUPERVISOR_STARTUP_SECONDS": "120", "MAX_IN_FLIGHT": "4"})
    with stack:
        stack.spawn_service("inference-replica-2", [
            str(BIN / "python"), "-m", "celery", "-A", "services.inference_worker.celery_app",
            "worker", "--hostname", f"{SECOND_REPLICA}%h", "--queues", "infer.tiny-internvl",
            "--loglevel", "INFO", "--without-gossip", "--without-mingle"])
        log = stack.work_dir / "logs" / "inference-replica-2.log"
        wait_until(lambda: "engine ready:" in log.read_text(errors="replace"), 120,
                   "the second inference replica")
        yield stack


@pytest.fixture(scope="session")
def fault_jobs(fault_stack: LocalStack) -> JobStore:
    """The job store of the fault stack, for the checks."""
    assert fault_stack.redis_url is not None
    return JobStore.from_url(fault_stack.redis_url, fault_stack.key_prefix)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print how fast the system recovered from each fault."""
    if REPORT:
        terminalreporter.section("recovery times")
        for line in REPORT:
            terminalreporter.write_line(line)
