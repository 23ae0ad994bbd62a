"""Telemetry: spans for gRPC calls and asyncpg queries reach the exporter chosen by the
environment, and events keep the call's trace id. Each case runs in a fresh interpreter,
since a process configures tracing once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import asyncio, asyncpg
from opentelemetry import trace
from libs.chassis.telemetry import configure_telemetry

configure_telemetry("telemetry-test")

async def main(url):
    conn = await asyncpg.connect(url)
    await conn.fetchval("SELECT 41 + 1")
    await conn.close()

asyncio.run(main(__import__("sys").argv[1]))
trace.get_tracer_provider().force_flush()
"""


def run(url: str, exporter: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "THROUGHLINE_TRACES_EXPORTER": exporter}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_console_exporter_prints_a_span_for_each_asyncpg_query(test_database_url):
    result = run(test_database_url, "console")
    assert result.returncode == 0, result.stderr
    spans = spans_in(result.stdout)
    statements = [s["attributes"].get("db.statement") for s in spans]
    assert "SELECT 41 + 1" in statements
    assert all(s["resource"]["attributes"]["service.name"] == "telemetry-test" for s in spans)


def test_no_exporter_prints_nothing_and_an_unknown_one_is_refused(test_database_url):
    quiet = run(test_database_url, "none")
    assert quiet.returncode == 0 and quiet.stdout == ""
    wrong = run(test_database_url, "carrier-pigeon")
    assert wrong.returncode != 0
    assert "THROUGHLINE_TRACES_EXPORTER must be none, console or otlp" in wrong.stderr


TRACED_SERVER = """
import asyncio, sys
import grpc
from google.protobuf import wrappers_pb2
from opentelemetry import trace
from libs.chassis.auth import AccessPolicy, TokenVerifier
from libs.chassis.server import Registration, Server
from libs.eventstore.context import current_trace_id

S = wrappers_pb2.StringValue


async def stamped_trace_id(request, context):
    return S(value=current_trace_id.get() or "")


async def main():
    verifier = TokenVerifier("a-secret-that-is-long-enough-for-hs256-signing")
    handler = grpc.method_handlers_generic_handler("test.Trace", {
        "Get": grpc.unary_unary_rpc_method_handler(
            stamped_trace_id, request_deserializer=S.FromString,
            response_serializer=S.SerializeToString),
    })
    server = Server(
        "traced",
        [Registration("test.Trace", lambda h, srv: srv.add_generic_rpc_handlers((h,)), handler)],
        verifier=verifier,
        policy=AccessPolicy({"/test.Trace/": frozenset({"reader"})}),
    )
    port = await server.start()
    token = ("authorization", "Bearer " + verifier.mint("ann", ["reader"]))
    parent = ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        get = channel.unary_unary(
            "/test.Trace/Get", request_serializer=S.SerializeToString,
            response_deserializer=S.FromString)
        propagated = await get(S(), metadata=(token, parent))
        fresh = await get(S(), metadata=(token,))
    await server.stop(0)
    print("stamped", propagated.value, fresh.value, file=sys.stderr)


asyncio.run(main())
trace.get_tracer_provider().force_flush()
"""


def spans_in(output: str) -> list[dict]:
    spans, decoder, text = [], json.JSONDecoder(), output.strip()
    while text:
        span, end = decoder.raw_decode(text)
        spans.append(span)
        text = text[end:].strip()
    return spans


def test_with_an_exporter_each_call_is_a_span_whose_trace_id_its_events_keep():
    env = {**os.environ, "THROUGHLINE_TRACES_EXPORTER": "console"}
    result = subprocess.run(
        [sys.executable, "-c", TRACED_SERVER], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    stamped = next(line for line in result.stderr.splitlines() if line.startswith("stamped"))
    _, propagated, fresh = stamped.split()
    assert propagated == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert len(fresh) == 32 and fresh != propagated
    calls = [s for s in spans_in(result.stdout) if s["name"] == "/test.Trace/Get"]
    assert sorted(s["context"]["trace_id"] for s in calls) == sorted(
        [f"0x{propagated}", f"0x{fresh}"]
    )
