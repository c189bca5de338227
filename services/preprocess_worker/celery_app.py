"""The preprocessing worker's Celery app (`celery -A services.preprocess_worker.celery_app`)."""

from services.preprocess_worker.config import get_settings
from shared.queues import PREPROCESS_QUEUE
from shared.worker_runtime import STOP_GRACE_SECONDS, create_worker_app

settings = get_settings()
app = create_worker_app("preprocess_worker", settings, queue=PREPROCESS_QUEUE,
                        tasks_module="services.preprocess_worker.tasks")
# A task past its budget gets SoftTimeLimitExceeded (its job fails with stage_timeout); a pool
# process wedged in C code past the grace is killed and replaced, and its task re-queued.
app.conf.task_soft_time_limit = settings.PREPROCESS_TIMEOUT_SECONDS
app.conf.task_time_limit = settings.PREPROCESS_TIMEOUT_SECONDS + STOP_GRACE_SECONDS
