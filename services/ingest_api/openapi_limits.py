"""The ingest API's OpenAPI document states the limits it enforces from its settings."""

from typing import Any

from fastapi import FastAPI

from services.ingest_api.config import IngestSettings

# Starlette's limit on a form field that is not a file (multipart parts are read in memory).
FORM_FIELD_BYTES = 1024 * 1024
# Form fields that name a job's inputs: a job needs one of them (or continues a conversation).
_INPUT_FIELDS = ("files", "upload_ids", "media_urls")


def document_limits(app: FastAPI, settings: IngestSettings) -> None:
    """Make app.openapi() write the settings' limits into the schemas it generates."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _apply(generate()["components"]["schemas"], settings)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _apply(schemas: dict[str, Any], settings: IngestSettings) -> None:
    form = schemas["JobForm"]
    for name, field in form["properties"].items():
        # A form field is left out rather than null: "null" would be sent as text.
        alternatives = [item for item in field.pop("anyOf", []) if item != {"type": "null"}]
        if alternatives:
            field.update(alternatives[0])
        if field.get("type") == "string" and "maxLength" not in field:
            field["maxLength"] = FORM_FIELD_BYTES
        if name in _INPUT_FIELDS:
            field.update(minItems=1, maxItems=settings.MAX_FILES)
    form["properties"]["prompt"].update(minLength=1, maxLength=settings.MAX_PROMPT_CHARS)
    form["anyOf"] = [{"required": [name]} for name in (*_INPUT_FIELDS, "previous_job_id")]
    upload = schemas["UploadCreate"]["properties"]["size_bytes"]
    upload["maximum"] = settings.max_file_bytes
    upload["description"] = (f"At most {settings.max_file_bytes} bytes; with parts, every "
                             "part but the last is at least 5 MiB")
