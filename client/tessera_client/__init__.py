"""Python client and command line for Tessera, asynchronous InternVL inference over REST."""

from tessera_client.api import Batch, Job, JobPage, Result, Tessera
from tessera_client.errors import (
    APIError,
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    JobFailedError,
    JobNotFinishedError,
    JobNotFoundError,
    RetryLaterError,
    TesseraError,
    WaitTimeoutError,
)
from tessera_client.sse import ServerEvent
from tessera_client.webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "APIError",
    "AuthenticationError",
    "Batch",
    "ConflictError",
    "InvalidRequestError",
    "Job",
    "JobFailedError",
    "JobNotFinishedError",
    "JobNotFoundError",
    "JobPage",
    "Result",
    "RetryLaterError",
    "ServerEvent",
    "Tessera",
    "TesseraError",
    "WaitTimeoutError",
    "WebhookVerificationError",
    "verify_webhook",
]
