"""Celery tasks of the preprocessing worker: adapters around prepare_job."""

from services.preprocess_worker.celery_app import app
from services.preprocess_worker.config import get_settings
from services.preprocess_worker.prepare import prepare_job
from services.preprocess_worker.probe import probe_upload
from shared.context_budget import check_fits, planned_visual_tokens
from shared.dispatch import queue_stage
from shared.errors import JobCanceled
from shared.model_cards import ModelCardStore
from shared.queues import PREPROCESS_QUEUE, PREPROCESS_TASK, PROBE_UPLOAD_TASK
from shared.schemas import JobRecord, PreprocessTask, Progress
from shared.upload_store import ProbeUploadTask, UploadStore
from shared.worker_runtime import ActiveRun, process_clients, run_stage


@app.task(name=PREPROCESS_TASK)
def preprocess(**payload: object) -> None:
    """Prepare a job's inputs, then queue it for its model's inference workers."""
    task = PreprocessTask.model_validate(payload)
    clients = process_clients()

    def work(record: JobRecord, active: ActiveRun) -> None:
        assert active.run is not None
        clients.notify(record, "job.started", {"stage": "preprocess"})

        def prepared(done: int) -> None:
            clients.report_progress(active, record, Progress(stage="preprocess", done=done,
                                                             total=len(record.media)))

        # Planned within the grid bounds the model's engine re-tiles in, when it has some.
        card = ModelCardStore(clients.jobs.redis, clients.settings.KEY_PREFIX).get(record.model)
        options = card.planned_options(record.media_options) if card else record.media_options
        # Safe points between inputs stop a canceled, timed-out or taken-over run.
        manifest = prepare_job(job_id=record.id, media=record.media, options=options,
                    objects=clients.objects, settings=get_settings(),
                    canceled=active.should_stop, prepared=prepared)
        if active.should_stop():
            raise JobCanceled
        if card is not None:  # a job whose tiles cannot fit fails here, not on a GPU
            images = [image for item in manifest.inputs for image in item.images]
            check_fits(planned_visual_tokens(images), f"{len(images)} planned images", card)
        clients.jobs.finish_preprocess(active.run)
        queue_stage(clients.celery, clients.jobs, record, "inference")

    run_stage(clients, task.job_id, PREPROCESS_QUEUE, "preprocess", work)


@app.task(name=PROBE_UPLOAD_TASK)
def probe(**payload: object) -> None:
    """Read a verified upload's headers and mark it ready (with its probe) or failed."""
    task = ProbeUploadTask.model_validate(payload)
    clients, settings = process_clients(), get_settings()
    probe_upload(upload_id=task.upload_id,
                 uploads=UploadStore(clients.jobs.redis, settings.KEY_PREFIX),
                 objects=clients.objects, settings=settings)
