"""Queue and task names: the only names producers and consumers agree on."""

PREPROCESS_QUEUE = "preprocess"
WEBHOOK_QUEUE = "webhooks"

PREPROCESS_TASK = "tessera.preprocess"
INFERENCE_TASK = "tessera.infer"
WEBHOOK_TASK = "tessera.deliver_webhook"
# Reads a verified direct upload's headers; runs on the preprocess queue.
PROBE_UPLOAD_TASK = "tessera.probe_upload"


# Celery on Redis serves priority 0 first; interactive work goes ahead of batch work.
CELERY_PRIORITY = {"interactive": 0, "batch": 6}
# The priority steps the broker keeps a list for (shared/celery_factory.py).
PRIORITY_STEPS = range(10)


def priority_lists(queue: str) -> list[str]:
    """The Redis lists a queue's waiting messages are spread over (one per priority step)."""
    return [queue if step == 0 else f"{queue}:{step}" for step in PRIORITY_STEPS]


def inference_queue(model: str) -> str:
    """The queue a model's inference workers consume: one per model, so each scales alone."""
    return f"infer.{model}"
