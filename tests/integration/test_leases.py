"""Stage leases against a real Redis."""

import subprocess
import sys
import time
import uuid

from shared.job_store import JobStore
from shared.leases import LeaseBook, holder_is_dead, this_worker


def _book(jobs: JobStore, seconds: float = 30) -> LeaseBook:
    return LeaseBook(jobs.redis, f"{jobs.prefix}-{uuid.uuid4().hex[:6]}", seconds)


def test_a_live_holder_keeps_its_lease_and_the_same_holder_may_retake_it(jobs: JobStore) -> None:
    book = _book(jobs)
    assert book.acquire("job_1:inference", "otherhost/1") is None
    assert book.acquire("job_1:inference", this_worker()) == "otherhost/1"
    assert book.acquire("job_1:inference", "otherhost/1") is None


def test_a_dead_local_holder_is_taken_over_at_once(jobs: JobStore) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead = f"{this_worker().rpartition('/')[0]}/{finished.stdout.strip()}"
    assert holder_is_dead(dead)
    book = _book(jobs)
    book.acquire("job_2:inference", dead)
    assert book.acquire("job_2:inference", this_worker()) is None


def test_a_lapsed_lease_is_handed_to_exactly_one_sweeper(jobs: JobStore) -> None:
    book = _book(jobs, seconds=0.2)
    book.acquire("job_3:inference", "otherhost/1")
    assert book.take_lapsed() == []
    time.sleep(0.3)
    assert book.take_lapsed() == ["job_3:inference"]
    assert book.take_lapsed() == []


def test_renewed_and_released_leases_do_not_lapse(jobs: JobStore) -> None:
    book = _book(jobs, seconds=0.3)
    book.acquire("job_4:inference", this_worker())
    book.acquire("job_5:inference", this_worker())
    time.sleep(0.2)
    assert book.renew({"job_4:inference": this_worker()}) == []
    book.release("job_5:inference", this_worker())
    time.sleep(0.2)
    assert book.take_lapsed() == []


def test_only_the_holder_renews_a_lease(jobs: JobStore) -> None:
    book = _book(jobs, seconds=0.2)
    book.acquire("job_6:inference", "otherhost/1#frozen")
    time.sleep(0.3)
    assert book.take_lapsed() == ["job_6:inference"]
    book.acquire("job_6:inference", "otherhost/2#current")
    # The frozen run wakes up: its renewal is refused, and the new holder's expiry is untouched.
    assert book.renew({"job_6:inference": "otherhost/1#frozen"}) == ["job_6:inference"]
    time.sleep(0.3)
    assert book.take_lapsed() == ["job_6:inference"]


def test_a_lease_taken_from_a_silent_holder_comes_back_until_its_stage_is_requeued(
        jobs: JobStore) -> None:
    book = _book(jobs, seconds=0.2)
    book.acquire("job_7:inference", "otherhost/1#silent")
    time.sleep(0.3)
    assert book.take_lapsed() == ["job_7:inference"]
    assert book.take_lapsed() == []  # taken: no other sweeper gets it now
    # The sweeper died before re-queuing the stage: the lease is due again.
    time.sleep(0.3)
    assert book.take_lapsed() == ["job_7:inference"]
    book.settle_taken("job_7:inference")
    time.sleep(0.3)
    assert book.take_lapsed() == []


def test_a_run_may_take_a_lease_taken_from_its_silent_holder_at_once(jobs: JobStore) -> None:
    book = _book(jobs, seconds=0.2)
    book.acquire("job_8:inference", "otherhost/1#silent")
    time.sleep(0.3)
    assert book.take_lapsed() == ["job_8:inference"]
    assert book.acquire("job_8:inference", "otherhost/2#new") is None
    book.settle_taken("job_8:inference")  # the new holder's lease stays
    assert book.live("job_8:inference")
