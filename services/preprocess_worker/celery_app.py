"""The preprocessing worker's Celery app (`celery -A services.preprocess_worker.celery_app`)."""

from services.preprocess_worker.config import get_settings
from shared.queues import PREPROCESS_QUEUE
from shared.worker_runtime import create_worker_app

app = create_worker_app("preprocess_worker", get_settings(), queue=PREPROCESS_QUEUE,
                        tasks_module="services.preprocess_worker.tasks")
