"""Queue and task names: the only names producers and consumers agree on."""

PREPROCESS_QUEUE = "preprocess"
WEBHOOK_QUEUE = "webhooks"

PREPROCESS_TASK = "tessera.preprocess"
INFERENCE_TASK = "tessera.infer"
WEBHOOK_TASK = "tessera.deliver_webhook"


def inference_queue(model: str) -> str:
    """The queue a model's inference workers consume: one per model, so each scales alone."""
    return f"infer.{model}"
