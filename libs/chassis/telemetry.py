"""OpenTelemetry: traces for gRPC calls and asyncpg queries. The exporter is chosen by
THROUGHLINE_TRACES_EXPORTER: "none" (the default), "console", or "otlp" (configured by the
standard OTEL_EXPORTER_OTLP_* variables).

With "none", nothing is instrumented: the gRPC and asyncpg instrumentation cost a
measurable share of every call even when every span is dropped. Each request still gets a
trace id that its events keep: the caller's, read from the W3C `traceparent` header
when it sends one, or a fresh random one."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

EXPORTER_VARIABLE = "THROUGHLINE_TRACES_EXPORTER"
_configured = False
_recording = False
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def configure_telemetry(service_name: str) -> None:
    global _configured, _recording
    if _configured:
        return
    _configured = True
    exporter = os.environ.get(EXPORTER_VARIABLE, "none").lower()
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
        _recording = True
        AsyncPGInstrumentor().instrument()


def tracing_interceptors() -> list:
    """The gRPC server interceptors for tracing: none unless spans go somewhere."""
    return [aio_server_interceptor()] if _recording else []


def request_trace_id(metadata: Mapping[str, str]) -> str:
    """The trace id for a request's events: the current span's when spans are recorded,
    else the caller's `traceparent` trace id, else a fresh one."""
    if _recording:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            return format(context.trace_id, "032x")
    match = _TRACEPARENT.match(metadata.get("traceparent", ""))
    if match and match[1] != "0" * 32:
        return match[1]
    return format(random.getrandbits(128) or 1, "032x")
