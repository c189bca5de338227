"""Cancel-After durations, and how they bound a job request."""

import pytest

from shared.errors import TesseraError
from shared.run_timeout import cancel_after_seconds, with_cancel_after
from shared.schemas import JobCreate


@pytest.mark.parametrize(("header", "seconds"), [
    ("90", 90), ("45s", 45), ("5m", 300), ("1h30m", 5400), ("1.5s", 2), ("500ms", 1),
    (" 2M ", 120)])
def test_cancel_after_takes_replicate_durations(header: str, seconds: int) -> None:
    assert cancel_after_seconds(header) == seconds


@pytest.mark.parametrize("header", ["", "soon", "5 m", "-5s", "0", "1d", "9000h"])
def test_cancel_after_refuses_what_is_not_a_duration(header: str) -> None:
    with pytest.raises(TesseraError) as refused:
        cancel_after_seconds(header)
    assert refused.value.code == "invalid_request"


def test_the_tighter_of_timeout_seconds_and_cancel_after_wins() -> None:
    request = JobCreate(prompt="p", timeout_seconds=600)
    assert with_cancel_after(request, "1m").timeout_seconds == 60
    assert with_cancel_after(request, "1h").timeout_seconds == 600
    assert with_cancel_after(JobCreate(prompt="p"), None).timeout_seconds is None
