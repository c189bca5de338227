"""OpenTelemetry set-up: one provider per process, exporters chosen by settings."""

import fcntl
import json
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from shared.settings import BaseServiceSettings


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans, one JSON object a line, to a file shared by all processes."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write spans under an exclusive lock so lines from several processes never interleave."""
        lines = "".join(json.dumps(json.loads(span.to_json())) + "\n" for span in spans)
        with open(self.path, "a", encoding="utf-8") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            file.write(lines)
        return SpanExportResult.SUCCESS


def setup_tracing(service_name: str, settings: BaseServiceSettings) -> TracerProvider:
    """Install this process's tracer provider and instrument Celery, urllib3 (MinIO) and,
    where installed (the `webhook` extra), httpx (webhook posts)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if settings.OTEL_EXPORTER_OTLP_ENDPOINT:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.OTEL_EXPORTER_OTLP_ENDPOINT.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    if settings.TRACING_FILE:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(settings.TRACING_FILE)))
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument(tracer_provider=provider)
    URLLib3Instrumentor().instrument(tracer_provider=provider)
    try:
        # Imported here: only the webhook image installs it, and API images stay small.
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    except ImportError:
        pass
    else:
        HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    return provider


def shutdown_tracing() -> None:
    """Flush spans still buffered: short-lived worker children lose them otherwise."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush()
        provider.shutdown()


def current_trace_id() -> str | None:
    """The hex id of the active trace, or None outside any span."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
