"""Queuing a job's stages: the one place that picks task, queue, payload and priority."""

from celery import Celery

from shared.job_store import JobStore, WorkStage
from shared.object_store import JobKeys
from shared.queues import (
    CELERY_PRIORITY,
    INFERENCE_TASK,
    PREPROCESS_QUEUE,
    PREPROCESS_TASK,
    inference_queue,
)
from shared.schemas import InferenceTask, JobRecord, PreprocessTask

# A batch job waiting this long is promoted to interactive priority, so it cannot starve.
BATCH_AGING_SECONDS = 300.0


def queue_stage(celery: Celery, jobs: JobStore, record: JobRecord, stage: WorkStage) -> None:
    """Queue a job's stage at its priority; a batch job's stage is also scheduled to age."""
    send_stage(celery, record, stage)
    if record.priority == "batch":
        jobs.schedule_aging(record.id, stage, BATCH_AGING_SECONDS)


def send_stage(celery: Celery, record: JobRecord, stage: WorkStage,
               priority: int | None = None) -> None:
    """Send a job's stage task at its priority, or at the one given."""
    if stage == "preprocess":
        name, queue = PREPROCESS_TASK, PREPROCESS_QUEUE
        kwargs = PreprocessTask(job_id=record.id).model_dump()
    else:
        name, queue = INFERENCE_TASK, inference_queue(record.model)
        kwargs = InferenceTask(job_id=record.id,
                               manifest_key=JobKeys(record.id).prepared_manifest()).model_dump()
    celery.send_task(name, kwargs=kwargs, queue=queue,
                     priority=CELERY_PRIORITY[record.priority] if priority is None else priority)


