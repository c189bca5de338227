"""Celery tasks of the inference worker: adapters around answer_job."""

from services.inference_worker.answer import PartialOutput, answer_job
from services.inference_worker.celery_app import app, process_engine, settings
from shared.object_store import JobKeys
from shared.queues import INFERENCE_TASK, inference_queue
from shared.schemas import InferenceTask, JobRecord, PreparedJob, Progress
from shared.worker_runtime import ActiveRun, process_clients, run_stage


@app.task(name=INFERENCE_TASK)
def infer(**payload: object) -> None:
    """Answer a prepared job, store its result and mark it succeeded."""
    task = InferenceTask.model_validate(payload)
    clients = process_clients()

    def work(record: JobRecord, active: ActiveRun) -> JobRecord:
        run = active.run
        assert run is not None
        manifest = clients.objects.get_model(task.manifest_key, PreparedJob)

        def flushed(delta: str) -> None:
            # A refused write (the run was taken over) stops the run at its next step.
            if clients.fenced(active, lambda current: clients.jobs.append_output(current, delta)):
                clients.notify(record, "job.output", {"delta": delta})
            # Pieces of text, about one token each; the total is the most the job may get.
            clients.report_progress(active, record, Progress(
                stage="inference", done=partial.received,
                total=record.generation.max_new_tokens))

        partial = PartialOutput(flushed)
        # The engine polls should_stop at each decoding step: cancel, timeout, takeover.
        result = answer_job(record=record, manifest=manifest, objects=clients.objects,
                            jobs=clients.jobs, engine=process_engine(), on_text=partial,
                            should_stop=active.should_stop)
        # Each run writes its own key and the job points at the one that committed, so a
        # stale run can never overwrite the result of the run that holds the stage.
        clients.jobs.check(run)
        result_key = JobKeys(record.id).result(run.attempt)
        clients.objects.put_model(result_key, result)
        return clients.jobs.succeed(run, result_key).record

    run_stage(clients, task.job_id, inference_queue(settings.MODEL_NAME), "inference", work)
