"""The webhook worker's Celery app (`celery -A services.webhook_worker.celery_app worker`)."""

from services.webhook_worker.config import get_settings
from shared.queues import WEBHOOK_QUEUE
from shared.worker_runtime import create_worker_app


def _start_schedule_loop() -> None:
    # Imported here: the tasks module imports this app.
    from services.webhook_worker.tasks import start_schedule_loop

    start_schedule_loop()


app = create_worker_app("webhook_worker", get_settings(), queue=WEBHOOK_QUEUE,
                        tasks_module="services.webhook_worker.tasks",
                        on_process_init=_start_schedule_loop)
