"""The ingest API app (`uvicorn services.ingest_api.main:app`)."""

from urllib.parse import urlsplit

from celery import Celery
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from services.ingest_api.config import IngestSettings, get_settings
from services.ingest_api.openapi_limits import document_limits
from services.ingest_api.routes import chat_router, router
from services.ingest_api.upload_routes import get_media_source_settings
from services.ingest_api.upload_routes import router as upload_router
from shared.body_limit import BodyLimit
from shared.celery_factory import create_celery_app
from shared.http_api import create_api
from shared.schemas import WebhookPayload


def create_app() -> FastAPI:
    """Build the ingest API."""
    settings = get_settings()
    app = create_api(settings, title="Tessera ingest API",
                     description="Submit images, videos and PDFs with a prompt to InternVL.")
    app.state.producer = _bounded_producer(settings)
    app.include_router(router)
    app.include_router(chat_router)
    app.include_router(upload_router)

    @app.webhooks.post("job-event")
    def job_event(body: WebhookPayload) -> None:
        """Sent to a job's webhook_url with headers webhook-id (stable per event),
        webhook-timestamp and webhook-signature (`v1,<base64>`, one per active secret).
        Answer 2xx within the timeout; 410 stops deliveries to the URL."""
    app.dependency_overrides[get_media_source_settings] = get_settings
    document_limits(app, settings)

    # Before the body is stored anywhere: by Content-Length up front, else while it is read.
    app.add_middleware(BodyLimit, max_bytes_for=settings.body_limit,
                       min_bytes_per_second=settings.BODY_MIN_BYTES_PER_SECOND,
                       grace_seconds=settings.BODY_GRACE_SECONDS)

    # The web page is served by the results API (PUBLIC_BASE_URL) and posts jobs here. Added
    # last, so it is the outermost middleware and error answers carry CORS headers too.
    public = urlsplit(settings.PUBLIC_BASE_URL)
    app.add_middleware(
        CORSMiddleware, allow_origins=[f"{public.scheme}://{public.netloc}"],
        allow_methods=["POST"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Prefer"],
        expose_headers=["Location"], max_age=600)
    return app


def _bounded_producer(settings: IngestSettings) -> Celery:
    """The Celery producer, failing a publish to a frozen or lost broker within seconds (503)
    instead of waiting on kombu's unbounded sockets."""
    producer = create_celery_app("ingest_api", settings)
    timeout = settings.REDIS_TIMEOUT_SECONDS
    producer.conf.broker_transport_options = {
        **producer.conf.broker_transport_options,
        "socket_timeout": timeout, "socket_connect_timeout": timeout}
    producer.conf.broker_connection_timeout = timeout
    producer.conf.task_publish_retry_policy = {
        "max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
    return producer


app = create_app()
