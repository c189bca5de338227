"""The webhook worker's Celery app (`celery -A services.webhook_worker.celery_app worker`)."""

from services.webhook_worker.config import get_settings
from shared.queues import WEBHOOK_QUEUE
from shared.worker_runtime import create_worker_app

app = create_worker_app("webhook_worker", get_settings(), queue=WEBHOOK_QUEUE,
                        tasks_module="services.webhook_worker.tasks")
