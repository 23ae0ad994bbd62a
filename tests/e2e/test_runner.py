"""`make run`'s runner: starts each service as a process, reports it once healthy, and
stops everything cleanly on SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

from infra.run import HEALTH_TIMEOUT_SECONDS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_the_runner_starts_services_reports_them_healthy_and_stops_on_sigint(
    test_database_url,
):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": test_database_url,
        "THROUGHLINE_SERVICES": f"sample=tests.e2e.sample_service:{port}",
    }
    runner = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "infra.run", env=env, stdout=asyncio.subprocess.PIPE
    )
    lines = []
    async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
        while not lines or "ready" not in lines[-1]:
            lines.append((await runner.stdout.readline()).decode())
    assert any(line.startswith("sample") and f"127.0.0.1:{port}  SERVING" in line for line in lines)

    runner.send_signal(signal.SIGINT)
    rest, _ = await asyncio.wait_for(runner.communicate(), 20)
    assert runner.returncode == 0
    assert rest.decode().strip().endswith("stopped")
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the service is still listening"


async def test_the_runner_says_which_service_failed_to_start_and_exits_1(test_database_url):
    """The identity service, given a malformed cipher key, exits with 2 at once, naming
    the variable, rather than serve and fail every write; the runner names it and
    stops."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": test_database_url,
        "THROUGHLINE_SERVICES": f"identity=services.identity:{port}",
        "THROUGHLINE_CIPHER_KEY": "not a key",
        "THROUGHLINE_CIPHER_OLD_KEYS": "",
    }
    runner = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "infra.run"],
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(runner.communicate(), HEALTH_TIMEOUT_SECONDS)
    assert runner.returncode == 1
    errors = err.decode()
    # The service's own words, then the runner's.
    assert "not starting: THROUGHLINE_CIPHER_KEY: a cipher key must be base64" in errors
    assert "identity exited with code 2 while starting" in errors
    assert "Traceback" not in errors
    assert out.decode().splitlines()[-1] == "stopped"
