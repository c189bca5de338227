"""The inference worker's Celery app: one engine per pool process, on its model's queue."""

from services.inference_worker.config import get_settings
from services.inference_worker.engine import Engine, load_engine
from shared.queues import inference_queue
from shared.worker_runtime import create_worker_app

settings = get_settings()
_engine: Engine | None = None


def _load_engine() -> None:
    # Loaded once per process, after fork: CUDA contexts and model threads do not survive fork.
    global _engine
    _engine = load_engine(settings.ENGINE, settings.MODEL_PATH, **settings.engine_options())


def process_engine() -> Engine:
    """The engine this worker process loaded at start."""
    if _engine is None:
        raise RuntimeError("the engine is loaded in worker_process_init")
    return _engine


app = create_worker_app("inference_worker", settings, queue=inference_queue(settings.MODEL_NAME),
                        tasks_module="services.inference_worker.tasks",
                        on_process_init=_load_engine)
# A pool process loads its model in worker_process_init; Celery's default 4 s would kill it
# mid-load and start another forever.
app.conf.worker_proc_alive_timeout = settings.MODEL_LOAD_TIMEOUT_SECONDS
