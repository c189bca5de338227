"""Faults injected into the running system, one bounded run each: every process kind SIGKILLed,
Redis restarted and frozen, S3 frozen, an inference replica frozen while another one runs. Every
accepted job must end exactly once (one terminal status, one result write, one terminal webhook
id), none failed by the fault; the recovery times are printed at the end."""

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from scripts.localstack import LocalStack
from shared.job_store import JobStore
from shared.schemas import JobRecord, JobStatus
from tests.faults.conftest import SECOND_REPLICA, SUPERVISED_REPLICA
from tests.faults.harness import RedisServer, Trial, replica_pids, wait_until
from tests.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.faults
JOBS = 20


@pytest.fixture
def new_trial(fault_stack: LocalStack, fault_jobs: JobStore,
              receiver: WebhookReceiver) -> Iterator[Callable[[str], Trial]]:
    """Trials on the fault stack; the receiver answers at once again afterwards."""
    yield lambda name: Trial(name, fault_stack, fault_jobs, receiver)
    receiver.delay_seconds = 0.0


def submitting(trial: Trial, count: int = JOBS, *, slow: bool = False) -> threading.Thread:
    """Submit the trial's jobs from a thread, so the fault lands while jobs are arriving."""
    thread = threading.Thread(target=trial.submit, args=(count,), kwargs={"slow": slow})
    thread.start()
    return thread


def preprocessing(records: list[JobRecord]) -> bool:
    return any(r.status is JobStatus.preprocessing and r.times.preprocess_finished_at is None
               for r in records)


def inferring_in(pid: int) -> Callable[[list[JobRecord]], bool]:
    return lambda records: any(r.status is JobStatus.inferring and r.worker is not None
                               and r.worker.endswith(f"/{pid}") for r in records)


def test_sigkilled_preprocess_worker(new_trial: Callable[[str], Trial],
                                     fault_stack: LocalStack) -> None:
    trial = new_trial("SIGKILL preprocess-worker")
    submitter = submitting(trial)
    trial.wait_for(preprocessing, 60, "a job being preprocessed")
    restarts = len(fault_stack.restarts.get("preprocess-worker", []))
    trial.fault(lambda: fault_stack.kill("preprocess-worker"))
    submitter.join()
    trial.finish()
    assert len(fault_stack.restarts["preprocess-worker"]) == restarts + 1


def test_sigkilled_inference_replica(new_trial: Callable[[str], Trial],
                                     fault_stack: LocalStack) -> None:
    trial = new_trial("SIGKILL inference replica")
    [replica] = replica_pids(fault_stack, SUPERVISED_REPLICA)
    submitter = submitting(trial, slow=True)
    trial.wait_for(inferring_in(replica), 90, "a job generating in the supervised replica")
    trial.fault(lambda: signal_pid(replica, signal.SIGKILL))
    submitter.join()
    trial.finish()
    assert len(replica_pids(fault_stack, SUPERVISED_REPLICA)) == 1


def test_sigkilled_supervisor_takes_its_replica_along_and_comes_back_alone(
        new_trial: Callable[[str], Trial], fault_stack: LocalStack) -> None:
    trial = new_trial("SIGKILL inference supervisor")
    [replica] = replica_pids(fault_stack, SUPERVISED_REPLICA)
    submitter = submitting(trial, slow=True)
    trial.wait_for(inferring_in(replica), 90, "a job generating in the supervised replica")
    trial.fault(lambda: fault_stack.kill("inference-worker"))
    wait_until(lambda: replica not in replica_pids(fault_stack, SUPERVISED_REPLICA), 5,
               "the orphaned replica to die with its supervisor")
    submitter.join()
    trial.finish()
    assert len(replica_pids(fault_stack, SUPERVISED_REPLICA)) == 1  # restarted, not doubled up


def test_sigkilled_webhook_worker_mid_delivery(new_trial: Callable[[str], Trial],
                                               fault_stack: LocalStack,
                                               receiver: WebhookReceiver) -> None:
    trial = new_trial("SIGKILL webhook-worker")
    receiver.delay_seconds = 1.5  # the worker dies while the receiver holds its POST
    submitter = submitting(trial)
    wait_until(lambda: receiver.held > 0, 90, "a webhook POST in flight")
    trial.fault(lambda: fault_stack.kill("webhook-worker"))
    submitter.join()
    trial.finish()
    assert any("re-sent" in note for note in trial.notes)


def test_sigkilled_apis(new_trial: Callable[[str], Trial], fault_stack: LocalStack) -> None:
    trial = new_trial("SIGKILL ingest-api and results-api")

    def kill_apis(index: int) -> None:
        if index == 5:
            trial.fault(lambda: (fault_stack.kill("ingest-api"),
                                 fault_stack.kill("results-api")))

    trial.submit(JOBS, between=kill_apis)
    trial.finish()


def test_redis_restart(new_trial: Callable[[str], Trial], fault_redis: RedisServer) -> None:
    trial = new_trial("Redis SIGKILLed and restarted")
    submitter = submitting(trial, count=12, slow=True)
    submitter.join()
    trial.wait_for(lambda records: preprocessing(records)
                   or any(r.status is JobStatus.inferring for r in records), 60,
                   "jobs in flight")
    trial.fault(fault_redis.kill)
    time.sleep(2)
    trial.heal(fault_redis.start)
    trial.finish()


def test_redis_freeze(new_trial: Callable[[str], Trial], fault_redis: RedisServer) -> None:
    trial = new_trial("Redis frozen 8 s (SIGSTOP)")
    submitting(trial, count=12, slow=True).join()
    trial.wait_for(lambda records: any(r.status is JobStatus.inferring for r in records), 60,
                   "jobs in flight")
    trial.fault(lambda: fault_redis.signal(signal.SIGSTOP))
    time.sleep(8)
    trial.heal(lambda: fault_redis.signal(signal.SIGCONT))
    trial.finish()


def test_s3_freeze(new_trial: Callable[[str], Trial], fault_stack: LocalStack) -> None:
    trial = new_trial("S3 frozen 8 s (SIGSTOP moto)")
    submitter = submitting(trial)
    trial.wait_for(preprocessing, 60, "a job being preprocessed")
    moto = fault_stack.processes["s3"].pid
    trial.fault(lambda: signal_pid(moto, signal.SIGSTOP))
    time.sleep(8)
    trial.heal(lambda: signal_pid(moto, signal.SIGCONT))
    submitter.join()
    trial.finish()


def test_frozen_replica_is_fenced_off_after_another_took_its_jobs(
        new_trial: Callable[[str], Trial], fault_stack: LocalStack) -> None:
    trial = new_trial("inference replica frozen until the other finished its jobs")
    [frozen] = replica_pids(fault_stack, SECOND_REPLICA)
    submitting(trial, count=12, slow=True).join()
    trial.wait_for(inferring_in(frozen), 90, "a job generating in the second replica")
    held = {r.id for r in trial.records() if inferring_in(frozen)([r])}
    trial.fault(lambda: signal_pid(frozen, signal.SIGSTOP))
    # Its leases lapse; the other replica re-runs its jobs and finishes them while it sleeps.
    trial.wait_for(lambda records: all(r.status.terminal for r in records if r.id in held),
                   120, "the frozen replica's jobs to finish elsewhere")
    trial.heal(lambda: signal_pid(frozen, signal.SIGCONT))
    time.sleep(5)  # the woken runs reach their next step, find their writes refused and stop
    trial.finish()
    assert all(r.attempts["inference"] >= 2 for r in trial.records() if r.id in held)


def signal_pid(pid: int, sig: signal.Signals) -> None:
    """Send sig to one process."""
    os.kill(pid, sig)
