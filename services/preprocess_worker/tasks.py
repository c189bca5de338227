"""Celery tasks of the preprocessing worker: adapters around prepare_job."""

from services.preprocess_worker.celery_app import app
from services.preprocess_worker.config import get_settings
from services.preprocess_worker.prepare import prepare_job
from shared.errors import JobCanceled
from shared.leases import StageTask
from shared.object_store import JobKeys
from shared.queues import INFERENCE_TASK, PREPROCESS_QUEUE, PREPROCESS_TASK, inference_queue
from shared.schemas import InferenceTask, JobRecord, PreprocessTask
from shared.worker_runtime import process_clients, run_stage


@app.task(name=PREPROCESS_TASK)
def preprocess(**payload: object) -> None:
    """Prepare a job's inputs, then queue it for its model's inference workers."""
    task = PreprocessTask.model_validate(payload)
    clients = process_clients()

    def work(record: JobRecord) -> None:
        clients.notify(record, "job.started", {"stage": "preprocess"})
        prepare_job(job_id=record.id, media=record.media, options=record.media_options,
                    objects=clients.objects, settings=get_settings(),
                    canceled=lambda: clients.jobs.cancel_requested(record.id))
        if clients.jobs.cancel_requested(record.id):
            raise JobCanceled
        clients.jobs.finish_preprocess(record.id)
        clients.notify(record, "job.progress", {
            "stage": "preprocess", "done": len(record.media), "total": len(record.media)})
        next_task = InferenceTask(job_id=record.id,
                                  manifest_key=JobKeys(record.id).prepared_manifest())
        clients.celery.send_task(INFERENCE_TASK, kwargs=next_task.model_dump(),
                                 queue=inference_queue(record.model))

    run_stage(clients, StageTask(PREPROCESS_TASK, PREPROCESS_QUEUE, task.model_dump()),
              "preprocess", work)
