"""One more API process beside the stack's, with its own settings (for fault tests that stop
or starve it without disturbing the shared stack)."""

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from scripts.localstack import BIN, REPO_ROOT, LocalStack, free_port, http_answers


@contextmanager
def api_process(stack: LocalStack, app: str, log: Path,
                **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run `app` (e.g. services.ingest_api.main:app) under uvicorn with the stack's environment
    and env on top; yields its URL and process, and stops it afterwards."""
    port = free_port()
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [str(BIN / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning"],
            cwd=REPO_ROOT, env={**stack.env, **env}, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not http_answers(f"{url}/livez"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{app} did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)
        yield url, process
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
