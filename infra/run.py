"""The local runner behind `make run`: gets PostgreSQL, starts every service as its own
process, waits until each answers its health check, prints one line per service, and on
Ctrl-C (or SIGTERM) stops them all gracefully."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from infra.postgres import database_url
from infra.services import ServiceSpec, configured_services

HEALTH_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0


class StartError(Exception):
    """A service exited, or never answered its health check, while starting."""


async def wait_healthy(spec: ServiceSpec, process: asyncio.subprocess.Process) -> None:
    deadline = asyncio.get_running_loop().time() + HEALTH_TIMEOUT_SECONDS
    async with grpc.aio.insecure_channel(f"127.0.0.1:{spec.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.returncode is not None:
                raise StartError(
                    f"{spec.name} exited with code {process.returncode} while starting "
                    f"(its log above says why)"
                )
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise StartError(f"{spec.name} did not become healthy on port {spec.port}")
            await asyncio.sleep(0.2)


async def stop_all(processes: list[asyncio.subprocess.Process]) -> None:
    for process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()


async def main() -> int:
    url = database_url()
    env = {**os.environ, "DATABASE_URL": url}
    print(f"postgres   {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    processes: list[asyncio.subprocess.Process] = []
    try:
        for spec in configured_services():
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                spec.module,
                "--port",
                str(spec.port),
                env=env,
                start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
            )
            processes.append(process)
            await wait_healthy(spec, process)
            print(f"{spec.name:<10} 127.0.0.1:{spec.port}  SERVING", flush=True)
        if not processes:
            print("no services are registered yet (infra/services.py)", flush=True)
        print("ready; Ctrl-C stops everything", flush=True)
        exits = [asyncio.create_task(p.wait()) for p in processes]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *exits], return_when=asyncio.FIRST_COMPLETED)
        if stopper not in done:
            print("a service exited; stopping the others", file=sys.stderr, flush=True)
            return 1
        return 0
    except StartError as error:
        print(f"{error}; stopping the others", file=sys.stderr, flush=True)
        return 1
    finally:
        await stop_all(processes)
        print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
