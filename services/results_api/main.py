"""The results API app (`uvicorn services.results_api.main:app`)."""

from fastapi import FastAPI

from services.results_api.config import get_settings
from services.results_api.routes import router
from services.results_api.ui import router as ui_router
from services.results_api.webhooks import router as webhooks_router
from shared.http_api import create_api


def create_app() -> FastAPI:
    """Build the results API."""
    app = create_api(get_settings(), title="Tessera results API",
                     description="Job status, results and event streams.")
    app.include_router(router)
    app.include_router(ui_router)
    app.include_router(webhooks_router)
    return app


app = create_app()
