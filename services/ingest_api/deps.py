"""Dependencies of the ingest API's routes."""

from typing import Annotated

from celery import Celery
from fastapi import Depends, Request

from services.ingest_api.config import IngestSettings, get_settings


def get_producer(request: Request) -> Celery:
    """The Celery app used to send tasks by name (no worker code is imported here)."""
    producer: Celery = request.app.state.producer
    return producer


SettingsDep = Annotated[IngestSettings, Depends(get_settings)]
ProducerDep = Annotated[Celery, Depends(get_producer)]
