"""Celery tasks of the inference worker: adapters around answer_job."""

from services.inference_worker.answer import PartialOutput, answer_job
from services.inference_worker.celery_app import app, process_engine, settings
from shared.object_store import JobKeys
from shared.queues import INFERENCE_TASK, inference_queue
from shared.schemas import InferenceTask, JobRecord, PreparedJob, Progress
from shared.worker_runtime import process_clients, run_stage


@app.task(name=INFERENCE_TASK)
def infer(**payload: object) -> None:
    """Answer a prepared job, store its result and mark it succeeded."""
    task = InferenceTask.model_validate(payload)
    clients = process_clients()

    def work(record: JobRecord) -> JobRecord:
        manifest = clients.objects.get_model(task.manifest_key, PreparedJob)

        def flushed(delta: str) -> None:
            clients.jobs.append_output(record.id, delta)
            clients.notify(record, "job.output", {"delta": delta})
            # Pieces of text, about one token each; the total is the most the job may get.
            clients.report_progress(record, Progress(
                stage="inference", done=partial.received,
                total=record.generation.max_new_tokens))

        partial = PartialOutput(flushed)
        result = answer_job(record=record, manifest=manifest, objects=clients.objects,
                            jobs=clients.jobs, engine=process_engine(), on_text=partial)
        # A fixed key: a redelivered task overwrites the same single result object.
        result_key = JobKeys(record.id).result()
        clients.objects.put_model(result_key, result)
        return clients.jobs.succeed(record.id, result_key).record

    run_stage(clients, task.job_id, inference_queue(settings.MODEL_NAME), "inference", work)
