"""Builders of valid domain objects for tests."""

import uuid
from datetime import UTC, datetime
from typing import Any

from shared.schemas import GenerationParams, JobRecord, JobStatus, MediaOptions, StageTimes


def job_record(**fields: Any) -> JobRecord:
    """A queued job of tenant "t" with no media; fields override any attribute."""
    now = datetime.now(UTC)
    defaults: dict[str, Any] = {
        "id": f"job_{uuid.uuid4().hex}", "tenant_id": "t", "api_key_id": "k",
        "status": JobStatus.queued, "model": "m", "prompt": "p",
        "generation": GenerationParams(), "media_options": MediaOptions(), "media": [],
        "times": StageTimes(created_at=now), "updated_at": now, "retention_seconds": 3600,
    }
    return JobRecord(**(defaults | fields))
