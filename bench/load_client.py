"""A load client in its own process, so the server under test has its core to itself:
`python -m bench.load_client --port P --kind echo|register --clients 16 --seconds 5`.
Prints `calls=<all calls made, warm-up included> rate=<calls per second after warm-up>
cpu_ms=<this client's CPU per call after warm-up>`."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from uuid import uuid4

import grpc
from google.protobuf import wrappers_pb2
from throughline.common.v1.date_pb2 import Date
from throughline.identity.v1 import identity_pb2 as pb
from throughline.identity.v1 import identity_pb2_grpc

LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
PREPARED_PER_SECOND = 5000


def noms_value(n: int) -> str:
    first, rest = divmod(n, 10000 * 24 * 24)
    middle, tail = divmod(rest, 24 * 24)
    return f"{LETTERS[first % 24]}{middle:04d}{LETTERS[tail // 24]}{LETTERS[tail % 24]}"


async def run(
    port: int, kind: str, clients: int, seconds: float, token: str, first: int
) -> tuple[int, float, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        if kind == "echo":
            echo = channel.unary_unary(
                "/bench.Echo/Echo",
                request_serializer=wrappers_pb2.BytesValue.SerializeToString,
                response_deserializer=wrappers_pb2.BytesValue.FromString,
            )
            payload = wrappers_pb2.BytesValue(value=b"x" * 200)

            async def call(n: int) -> None:
                await echo(payload)
        else:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            metadata = (("authorization", f"Bearer {token}"),)

            def request(n: int) -> pb.RegisterPersonRequest:
                return pb.RegisterPersonRequest(
                    command_id=str(uuid4()),
                    name=pb.Name(given_names="Load", family_name=f"Test{n}"),
                    date_of_birth=Date(year=1980, month=1, day=1 + n % 28),
                    sex=pb.SEX_MALE,
                    identifiers=[
                        pb.Identifier(type=pb.IDENTIFIER_TYPE_NOMS, value=noms_value(first + n))
                    ],
                )

            # Built before the clock starts, as the echo payload is, so the client's own
            # work weighs on the shared cores as little as it does for echo.
            prepared = [request(n) for n in range(clients + int(seconds * PREPARED_PER_SECOND))]

            async def call(n: int) -> None:
                await stub.RegisterPerson(
                    prepared[n] if n < len(prepared) else request(n), metadata=metadata
                )

        counter = iter(range(10**9))
        for _ in range(clients):  # warm up each connection's stream
            await call(next(counter))
        stop_at = time.perf_counter() + seconds
        done = [0]

        async def client() -> None:
            while time.perf_counter() < stop_at:
                await call(next(counter))
                done[0] += 1

        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        return clients + done[0], done[0] / elapsed, cpu / done[0] * 1000


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=["echo", "register"], required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--first", type=int, default=50_000_000)
    args = parser.parse_args()
    token = os.environ.get("BENCH_TOKEN", "")
    calls, rate, cpu_ms = asyncio.run(
        run(args.port, args.kind, args.clients, args.seconds, token, args.first)
    )
    print(f"calls={calls} rate={rate:.1f} cpu_ms={cpu_ms:.4f}")
