"""Telemetry: spans for asyncpg queries reach the exporter chosen by the environment.
Each case runs in a fresh interpreter, since a process configures tracing once."""

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
    spans = []
    decoder = json.JSONDecoder()
    text = result.stdout.strip()
    while text:
        span, end = decoder.raw_decode(text)
        spans.append(span)
        text = text[end:].strip()
    statements = [s["attributes"].get("db.statement") for s in spans]
    assert "SELECT 41 + 1" in statements
    assert all(s["resource"]["attributes"]["service.name"] == "telemetry-test" for s in spans)


def test_no_exporter_prints_nothing_and_an_unknown_one_is_refused(test_database_url):
    quiet = run(test_database_url, "none")
    assert quiet.returncode == 0 and quiet.stdout == ""
    wrong = run(test_database_url, "carrier-pigeon")
    assert wrong.returncode != 0
    assert "THROUGHLINE_TRACES_EXPORTER must be none, console or otlp" in wrong.stderr
