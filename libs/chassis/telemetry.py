"""OpenTelemetry: traces for gRPC calls and asyncpg queries. The exporter is chosen by
THROUGHLINE_TRACES_EXPORTER: "none" (the default), "console", or "otlp" (configured by the
standard OTEL_EXPORTER_OTLP_* variables). With "none", spans are not recorded, but each
request still gets a trace id (the caller's, when it sends a traceparent) that its events
keep; asyncpg queries are instrumented only when spans go somewhere."""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

EXPORTER_VARIABLE = "THROUGHLINE_TRACES_EXPORTER"
_configured = False


def configure_telemetry(service_name: str) -> None:
    global _configured
    if _configured:
        return
    _configured = True
    exporter = os.environ.get(EXPORTER_VARIABLE, "none").lower()
    # With nowhere to send spans, record none: a non-recording span still carries a
    # fresh (or the caller's propagated) trace id for the events, at a fraction of the cost.
    sampler = ParentBased(ALWAYS_OFF) if exporter == "none" else ParentBased(ALWAYS_ON)
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}), sampler=sampler
    )
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter != "none":
        raise ValueError(f"{EXPORTER_VARIABLE} must be none, console or otlp, not {exporter!r}")
    trace.set_tracer_provider(provider)
    if exporter != "none":
        AsyncPGInstrumentor().instrument()


def tracing_interceptor():
    return aio_server_interceptor()


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
