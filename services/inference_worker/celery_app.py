"""The inference worker's Celery app: one engine per pool process, on its model's queue."""

import logging
import time

from celery.signals import worker_ready

from services.inference_worker.config import get_settings
from services.inference_worker.engine import Engine, load_engine
from shared.job_store import utcnow
from shared.model_cards import ModelCard, ModelCardStore
from shared.queues import inference_queue
from shared.worker_runtime import create_worker_app, process_clients

log = logging.getLogger(__name__)
settings = get_settings()
# Logged by each pool process once it can take jobs; the local stack waits for it.
ENGINE_READY = "engine ready:"
_engine: Engine | None = None
_load_seconds: list[float] = []


def _load_engine() -> None:
    # Loaded once per process, after fork: CUDA contexts and model threads do not survive fork.
    global _engine
    started = time.perf_counter()
    settings.pin_gpus()
    _engine = load_engine(settings.ENGINE, settings.MODEL_PATH, **settings.engine_options())
    _load_seconds.append(time.perf_counter() - started)
    limits, bounds = _engine.limits, _engine.limits.tile_bounds
    ModelCardStore(process_clients().jobs.redis, settings.KEY_PREFIX).publish(ModelCard(
        name=settings.MODEL_NAME, engine=_engine.name, context_length=limits.context_length,
        tokens_per_tile=limits.tokens_per_tile,
        min_tiles=bounds.min_tiles if bounds else None,
        max_tiles=bounds.max_tiles if bounds else None, updated_at=utcnow()))


def process_engine() -> Engine:
    """The engine this worker process loaded at start."""
    if _engine is None:
        raise RuntimeError("the engine is loaded in worker_process_init")
    return _engine


app = create_worker_app("inference_worker", settings, queue=inference_queue(settings.MODEL_NAME),
                        tasks_module="services.inference_worker.tasks",
                        on_process_init=_load_engine)
# One process, one engine, many jobs in flight: worker threads block on the engine, which
# batches them (a process per job would load the model once per job slot).
app.conf.worker_pool = "threads"
app.conf.worker_concurrency = settings.MAX_IN_FLIGHT


@worker_ready.connect(weak=False)
def _announce_engine(**_: object) -> None:
    # Logging is configured only once the worker is up, after the engine was loaded.
    if _engine is not None:
        log.info("%s %s (%s engine loaded in %.1f s)", ENGINE_READY, settings.MODEL_PATH,
                 _engine.name, _load_seconds[-1])
