"""Schemathesis with every check against both APIs' OpenAPI documents, on the started stack:
no server error, no status, content type or body that the documents do not describe.

Marked `fuzz` (deselect with `-m "not fuzz"`); bounded examples keep it to about a minute."""

import subprocess
from pathlib import Path

import pytest

from scripts.localstack import BIN, LocalStack
from shared.auth import ApiKeyStore, Scope
from shared.job_store import JobStore

CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = 15

pytestmark = pytest.mark.fuzz


@pytest.fixture(scope="module")
def fuzz_key(jobs: JobStore) -> str:
    """A key of its own tenant, with a rate limit that hundreds of requests a second pass."""
    token, _ = ApiKeyStore(jobs.redis, jobs.prefix).create(
        tenant_id="fuzz", scopes=list(Scope), name="schemathesis", rate_limit_per_minute=10**6)
    return token


@pytest.mark.parametrize("api", ["ingest", "results"])
def test_schemathesis_finds_nothing_the_openapi_document_does_not_allow(
        stack: LocalStack, fuzz_key: str, api: str, tmp_path: Path) -> None:
    base_url = stack.ingest_url if api == "ingest" else stack.results_url
    run = subprocess.run(
        [str(BIN / "schemathesis"), "--config-file", str(CONFIG), "--no-color", "run",
         f"{base_url}/openapi.json", "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
         "--seed", "1", "--generation-database", "none", "--request-timeout", "30",
         "--header", f"Authorization: Bearer {fuzz_key}",
         "--report", "junit", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-2000:]
