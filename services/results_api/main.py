"""The results API app (`uvicorn services.results_api.main:app`)."""

from fastapi import FastAPI

from services.results_api.config import get_settings
from services.results_api.routes import router
from shared.http_api import create_api


def create_app() -> FastAPI:
    """Build the results API."""
    app = create_api(get_settings(), title="Tessera results API",
                     description="Job status, results and event streams.")
    app.include_router(router)
    return app


app = create_app()
