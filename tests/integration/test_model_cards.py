"""Model cards: each replica publishes what its engine accepts, and jobs are planned within it."""

from scripts.localstack import LocalStack
from scripts.sample_media import sample_jpeg, sample_mp4
from shared.job_store import JobStore, utcnow
from shared.model_cards import ModelCardStore
from shared.settings import BaseServiceSettings
from tests.client import result, submit, wait_terminal


def test_the_replica_publishes_its_engines_card(stack: LocalStack, jobs: JobStore,
                                                settings: BaseServiceSettings) -> None:
    card = ModelCardStore(jobs.redis, settings.KEY_PREFIX).get("tiny-internvl")
    assert card is not None
    assert (card.engine, card.context_length, card.tokens_per_tile, card.tile_bounds) == (
        "transformers", 32768, 256, None)


def test_images_are_planned_within_the_grid_bounds_of_the_models_engine(
        stack: LocalStack, jobs: JobStore, settings: BaseServiceSettings) -> None:
    cards = ModelCardStore(jobs.redis, settings.KEY_PREFIX)
    published = cards.get("tiny-internvl")
    assert published is not None
    # As LMDeploy on an HF-native checkpoint whose processor allows at most 2 tiles would.
    cards.publish(published.model_copy(update={"engine": "lmdeploy", "min_tiles": 1,
                                               "max_tiles": 2, "updated_at": utcnow()}))
    try:
        response = submit(stack, [("photo.jpg", sample_jpeg(1600, 600))], max_tiles=6)
        job = wait_terminal(stack, response.json()["id"])
    finally:
        cards.publish(published)
    assert job["status"] == "succeeded", job
    [summary] = result(stack, job["id"]).json()["inputs"]
    [image] = summary["images"]
    # 1600x600 under at most 6 tiles would be 3x1; within the engine's 2 it is 2x1.
    assert (image["cols"], image["rows"], image["num_tiles"]) == (2, 1, 3)



def test_media_that_cannot_fit_the_models_context_is_refused_at_submission(
        stack: LocalStack, jobs: JobStore, settings: BaseServiceSettings) -> None:
    cards = ModelCardStore(jobs.redis, settings.KEY_PREFIX)
    published = cards.get("tiny-internvl")
    assert published is not None
    cards.publish(published.model_copy(update={"context_length": 4096, "updated_at": utcnow()}))
    try:
        video = [("clip.mp4", sample_mp4(seconds=2, fps=10))]
        refused = submit(stack, video)  # the default 32 frames
        fits = submit(stack, video, num_frames=8)
    finally:
        cards.publish(published)
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert problem["code"] == "context_overflow"
    assert "8,256 visual tokens (32 video frames" in problem["detail"]
    assert fits.status_code == 202
    assert wait_terminal(stack, fits.json()["id"])["status"] == "succeeded"
