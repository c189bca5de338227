"""The results API app (`uvicorn services.results_api.main:app`)."""

from fastapi import FastAPI

from services.results_api.config import get_settings
from services.results_api.routes import router
from services.results_api.ui import router as ui_router
from services.results_api.webhooks import router as webhooks_router
from shared.body_limit import SMALL_BODY_BYTES, BodyLimit
from shared.http_api import create_api


def create_app() -> FastAPI:
    """Build the results API."""
    settings = get_settings()
    app = create_api(settings, title="Tessera results API",
                     description="Job status, results and event streams.")
    # Its bodies are small JSON (secret rotation, redelivery): refuse more, and slow ones.
    app.add_middleware(BodyLimit, max_bytes_for=lambda _: SMALL_BODY_BYTES,
                       min_bytes_per_second=settings.BODY_MIN_BYTES_PER_SECOND,
                       grace_seconds=settings.BODY_GRACE_SECONDS)
    app.include_router(router)
    app.include_router(ui_router)
    app.include_router(webhooks_router)
    return app


app = create_app()
