"""Schemas validate what clients send and render what they see."""


import pytest
from pydantic import ValidationError

from shared.schemas import GenerationParams, JobPublic, JobStatus, MediaOptions
from tests.factories import job_record


def test_generation_defaults_are_greedy() -> None:
    assert GenerationParams().greedy
    assert not GenerationParams(temperature=0.7).greedy


def test_generation_rejects_min_tokens_above_max() -> None:
    with pytest.raises(ValidationError, match="min_new_tokens"):
        GenerationParams(max_new_tokens=4, min_new_tokens=5)


@pytest.mark.parametrize("fields", [
    {"min_tiles": 5, "max_tiles": 4}, {"max_tiles": 41}, {"start_seconds": 5, "end_seconds": 2},
    {"first_page": 3, "last_page": 2}, {"num_frames": 0}, {"dpi": 1000},
])
def test_media_options_reject_out_of_range_values(fields: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        MediaOptions.model_validate(fields)


def test_terminal_statuses() -> None:
    assert {status for status in JobStatus if status.terminal} == {
        JobStatus.succeeded, JobStatus.failed, JobStatus.canceled, JobStatus.expired}


def test_public_job_links_point_at_the_results_api() -> None:
    record = job_record(id="job_1", status=JobStatus.queued)
    public = JobPublic.from_record(record, "https://api.example/")
    assert public.links.self == "https://api.example/v1/jobs/job_1"
    assert public.links.result.endswith("/v1/jobs/job_1/result")
    assert public.links.events.endswith("/v1/jobs/job_1/events")
    assert not public.terminal
