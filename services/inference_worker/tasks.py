"""Celery tasks of the inference worker: adapters around answer_job."""

from services.inference_worker.answer import answer_job
from services.inference_worker.celery_app import app, process_engine
from shared.object_store import JobKeys
from shared.queues import INFERENCE_TASK
from shared.schemas import InferenceTask, JobRecord, PreparedJob
from shared.worker_runtime import process_clients, run_stage


@app.task(name=INFERENCE_TASK)
def infer(**payload: object) -> None:
    """Answer a prepared job, store its result and mark it succeeded."""
    task = InferenceTask.model_validate(payload)
    clients = process_clients()

    def work(record: JobRecord) -> JobRecord:
        manifest = clients.objects.get_model(task.manifest_key, PreparedJob)
        result = answer_job(record=record, manifest=manifest, objects=clients.objects,
                            engine=process_engine())
        # A fixed key: a redelivered task overwrites the same single result object.
        result_key = JobKeys(record.id).result()
        clients.objects.put_model(result_key, result)
        return clients.jobs.succeed(record.id, result_key).record

    run_stage(clients, task.job_id, "inference", work)
