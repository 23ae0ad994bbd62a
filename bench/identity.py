"""Identity benchmark (`make bench-identity`). Not a test: it prints figures, ending with
machine-readable `name=value` lines.

- Loads BENCH_PEOPLE (default 1,000,000) synthetic people, each with a NOMS number,
  through the real event store (in bulk appends) and the real search-index projection,
  and prints both rates.
- SearchPeople p50/p99 over 1,000 mixed queries through gRPC (exact identifier, name and
  date of birth, misspelt name), one at a time; then, apart from the issue's mix, over
  300 searches by name alone (no date of birth), the kind that finds the most
  candidates: a common name pair is shared by hundreds of people.
- RegisterPerson commands/s through gRPC with 16 concurrent clients, next to a gRPC echo
  server's requests/s measured in the same run with the same 16 clients (alternating,
  four times each, with the lowest and highest round's ratio), with the server's, the
  load client's and PostgreSQL's CPU time per call, the ratio those allow at most
  when both loads use every core, how busy the server's event-loop thread was and the
  write window the store adapted to; and, timed just before, how fast a plain Python
  loop runs on this machine now.
- Precision and recall at the default threshold on a labelled synthetic set.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import uuid4

import grpc
from google.protobuf import wrappers_pb2
from throughline.common.v1.date_pb2 import Date
from throughline.identity.v1 import identity_pb2 as pb
from throughline.identity.v1 import identity_pb2_grpc

from bench.load_client import noms_value
from infra.postgres import scratch_database
from libs.chassis.auth import TokenVerifier
from libs.eventstore import create_pool
from libs.eventstore.recorder import quote_schema
from services.identity.bootstrap import bootstrap
from services.identity.domain import IdentifierClaim, Person
from services.identity.grpc_api import build_server
from services.identity.identifiers import Identifier, IdentifierType
from services.identity.matching import DEFAULT_THRESHOLD
from services.identity.search_index import TABLES as SEARCH_TABLES
from services.identity.synthetic import labelled_set, measure_quality, population, typo

PEOPLE = int(os.environ.get("BENCH_PEOPLE", "1000000"))
QUERIES = 1000
NAME_ONLY_QUERIES = 300
CLIENTS = 16
DURATION = float(os.environ.get("BENCH_SECONDS", "5"))
# Single rounds of RegisterPerson over echo have ranged from 0.29 to 0.50 on this machine
# within minutes (the speed of a shared machine drifts): four rounds, and the spread shown.
ROUNDS = 4
CHUNK = 2000
REFERENCE_ITERATIONS = 2_000_000
SECRET = "bench-secret-long-enough-for-hs256-signing"


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def noms(key: int) -> Identifier:
    return Identifier(IdentifierType.NOMS, noms_value(key))


async def load(identity, people) -> tuple[float, float]:
    """Appends registrations (person and NOMS claim) in bulk, then runs the projection."""
    mapper = identity.mapper
    now = datetime.now(UTC)
    started = time.perf_counter()
    for offset in range(0, len(people), CHUNK):
        stored = []
        for person in people[offset : offset + CHUNK]:
            identifier = noms(person.key)
            registered = Person.register(
                person.name, person.date_of_birth, person.sex, [identifier], [], now
            )
            claim = IdentifierClaim.first(identifier, registered.id)
            for aggregate in (registered, claim):
                stored.extend(mapper.to_stored_event(e) for e in aggregate.collect_events())
        await identity.store.append(stored)
        if (offset // CHUNK) % 50 == 0:
            progress(f"appended {offset + CHUNK:,} people")
    append_rate = len(people) / (time.perf_counter() - started)

    started = time.perf_counter()
    reported = 0

    def report(done: int, total: int) -> None:  # every 500,000 positions, and the last
        nonlocal reported
        if done - reported >= 500_000 or done == total:
            reported = done
            progress(f"indexed up to position {done:,} of {total:,}")

    await identity.projection.catch_up(progress=report)
    index_rate = len(people) / (time.perf_counter() - started)
    # What autovacuum would do after a bulk load, done now rather than in the middle of
    # the timed runs: statistics for the planner, and the inserted rows vacuumed (by
    # default PostgreSQL vacuums a table after inserts of a fifth of its size).
    schema = quote_schema(identity.store.schema)
    for table in ("stored_events", *SEARCH_TABLES):
        progress(f"VACUUM ANALYZE {table}")
        await identity.store.pool.execute(f"VACUUM ANALYZE {schema}.{table}")
    return append_rate, index_rate


def mixed_queries(people, rng: random.Random) -> list[pb.SearchPeopleRequest]:
    queries = []
    for i in range(QUERIES):
        person = rng.choice(people)
        dob = Date(
            year=person.date_of_birth.year,
            month=person.date_of_birth.month,
            day=person.date_of_birth.day,
        )
        if i % 3 == 0:
            identifier = noms(person.key)
            queries.append(
                pb.SearchPeopleRequest(
                    identifiers=[
                        pb.Identifier(type=pb.IDENTIFIER_TYPE_NOMS, value=identifier.value)
                    ]
                )
            )
        elif i % 3 == 1:
            queries.append(
                pb.SearchPeopleRequest(
                    name=pb.Name(
                        given_names=person.name.given_names, family_name=person.name.family_name
                    ),
                    date_of_birth=dob,
                )
            )
        else:
            queries.append(
                pb.SearchPeopleRequest(
                    name=pb.Name(
                        given_names=person.name.given_names,
                        family_name=typo(rng, person.name.family_name),
                    ),
                    date_of_birth=dob,
                )
            )
    return queries


def name_only_queries(people, rng: random.Random) -> list[pb.SearchPeopleRequest]:
    return [
        pb.SearchPeopleRequest(
            name=pb.Name(given_names=p.name.given_names, family_name=p.name.family_name)
        )
        for p in (rng.choice(people) for _ in range(NAME_ONLY_QUERIES))
    ]


async def bench_search(stub, metadata, queries) -> list[float]:
    latencies = []
    for query in queries[:50]:  # warm up
        await stub.SearchPeople(query, metadata=metadata)
    for query in queries:
        started = time.perf_counter()
        await stub.SearchPeople(query, metadata=metadata)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


@dataclass(frozen=True)
class Load:
    """A load run's rate, and the CPU each call cost this process (the server under
    test), the load client and the local PostgreSQL server, when it runs on this
    machine; and of this process's share, what its event-loop thread used."""

    rate: float
    server_cpu_ms: float
    client_cpu_ms: float
    database_cpu_ms: float | None
    loop_cpu_ms: float = 0.0
    loop_runnable_ms: float | None = None

    @property
    def machine_cpu_ms(self) -> float:
        """CPU per call on the whole machine: server, client and PostgreSQL."""
        return self.server_cpu_ms + self.client_cpu_ms + (self.database_cpu_ms or 0.0)

    @property
    def loop_busy(self) -> float:
        """The share of the time the server's event-loop thread was on a CPU. grpc.aio
        serves every call on that one thread: near 1, it is the limit; well below 1, the
        calls spend their time waiting (on PostgreSQL, the write window, the client)."""
        return self.loop_cpu_ms * self.rate / 1000

    @property
    def loop_runnable(self) -> float | None:
        """The share of the time that thread was ready to run but waited for a CPU (the
        machine's cores all busy); None where Linux's schedstat is not available."""
        if self.loop_runnable_ms is None:
            return None
        return self.loop_runnable_ms * self.rate / 1000


def python_loop_ns(
    iterations: int = REFERENCE_ITERATIONS,
    repeats: int = 3,
    *,
    timer: Callable[[], float] = time.perf_counter,
) -> float:
    """Nanoseconds per addition in a plain Python loop, the fastest of `repeats`: how fast
    this machine runs the interpreter at the time. It has drifted by a factor of two
    between sessions, and RegisterPerson is mostly interpreted Python where echo is mostly
    gRPC's C core, so register_vs_echo moves with it."""
    best = float("inf")
    for _ in range(repeats):
        started = timer()
        total = 0
        for n in range(iterations):
            total += n
        best = min(best, timer() - started)
    return best / iterations * 1e9


def postgres_cpu_seconds() -> float | None:
    """CPU time used so far by local PostgreSQL processes (None when none are local)."""
    total, found = 0, False
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name, fields = stat[: stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if "postgres" in name:
            found = True
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK") if found else None


def runqueue_seconds() -> float | None:
    """Time the calling thread has spent ready to run but waiting for a CPU (Linux's
    /proc/thread-self/schedstat; None elsewhere)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def per_call_ms(before: float | None, after: float | None, calls: int) -> float | None:
    """Milliseconds per call between two readings in seconds; None if either is missing."""
    return None if before is None or after is None else (after - before) / calls * 1000


def mean_or_none(values: list[float | None]) -> float | None:
    return None if None in values else statistics.fmean(values)  # type: ignore[arg-type]


def mean_load(loads: list[Load]) -> Load:
    return Load(
        statistics.fmean(load.rate for load in loads),
        statistics.fmean(load.server_cpu_ms for load in loads),
        statistics.fmean(load.client_cpu_ms for load in loads),
        mean_or_none([load.database_cpu_ms for load in loads]),
        statistics.fmean(load.loop_cpu_ms for load in loads),
        mean_or_none([load.loop_runnable_ms for load in loads]),
    )


async def load_from_another_process(
    port: int, kind: str, token: str = "", *, first: int = 50_000_000, clients: int = CLIENTS
) -> Load:
    """Drives `port` from a separate client process (bench/load_client.py), so client and
    server do not share a core; the echo baseline is driven the same way."""
    # This coroutine runs on the event loop's thread, so thread_time() is that thread's.
    cpu_before, database_before = time.process_time(), postgres_cpu_seconds()
    loop_before, runnable_before = time.thread_time(), runqueue_seconds()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.load_client",
        "--port",
        str(port),
        "--kind",
        kind,
        "--clients",
        str(clients),
        "--seconds",
        str(DURATION),
        "--first",
        str(first),
        env={**os.environ, "BENCH_TOKEN": token},
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"load client failed: {output.decode()}")
    cpu, database_after = time.process_time() - cpu_before, postgres_cpu_seconds()
    loop_cpu, runnable_after = time.thread_time() - loop_before, runqueue_seconds()
    figures = dict(pair.split("=") for pair in output.decode().split())
    calls = int(figures["calls"])
    return Load(
        float(figures["rate"]),
        cpu / calls * 1000,
        float(figures["cpu_ms"]),
        per_call_ms(database_before, database_after, calls),
        loop_cpu / calls * 1000,
        per_call_ms(runnable_before, runnable_after, calls),
    )


async def bench_echo(clients: int = CLIENTS) -> Load:
    async def echo(request, context):
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Echo",
                {
                    "Echo": grpc.unary_unary_rpc_method_handler(
                        echo,
                        request_deserializer=wrappers_pb2.BytesValue.FromString,
                        response_serializer=wrappers_pb2.BytesValue.SerializeToString,
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    load = await load_from_another_process(port, "echo", clients=clients)
    await server.stop(0)
    return load


@dataclass(frozen=True)
class Alternation:
    """Echo and RegisterPerson loads run in turn: the mean of each, and each round's
    RegisterPerson rate over the echo rate measured just before it."""

    echo: Load
    register: Load
    round_ratios: tuple[float, ...]

    @classmethod
    def of(cls, echoes: list[Load], registers: list[Load]) -> Alternation:
        """From each round's loads, echo's and RegisterPerson's in the same order."""
        return cls(
            mean_load(echoes),
            mean_load(registers),
            tuple(r.rate / e.rate for e, r in zip(echoes, registers, strict=True)),
        )

    @property
    def ratio(self) -> float:
        return self.register.rate / self.echo.rate

    @property
    def lowest(self) -> float:
        return min(self.round_ratios)

    @property
    def highest(self) -> float:
        return max(self.round_ratios)

    @property
    def spread(self) -> str:
        """The lowest and highest round's ratio, as `0.35-0.43`."""
        return f"{self.lowest:.2f}-{self.highest:.2f}"


async def register_next_to_echo(
    port: int, token: str, *, first: int, label: str = ""
) -> Alternation:
    """The echo baseline and RegisterPerson on `port`, each driven by CLIENTS clients in
    another process. This machine's speed drifts by tens of percent over seconds, so the
    two alternate, ROUNDS times each, and their means are compared. NOMS numbers start
    at `first` and never repeat between rounds."""
    echoes, registers = [], []
    for round_ in range(ROUNDS):
        progress(f"{label}echo baseline, {CLIENTS} clients in another process ({round_ + 1})")
        echoes.append(await bench_echo())
        progress(f"{label}RegisterPerson, {CLIENTS} clients in another process ({round_ + 1})")
        registers.append(
            await load_from_another_process(
                port, "register", token, first=first + round_ * 5_000_000
            )
        )
    return Alternation.of(echoes, registers)


async def bench_quality(pool) -> tuple[float, float, int, int]:
    identity = await bootstrap(pool, schema="bench_identity_quality", cipher_key="")
    identity.start_projection()
    labelled = labelled_set(2000, seed=2026)
    person_ids = {}
    for record in labelled.records:
        written = await identity.application.register_person(
            uuid4(), record.name, record.date_of_birth, record.sex, [], record.aliases
        )
        person_ids[record.key] = written.person_id
    await identity.application.wait_for_index(await identity.store.head_position(), timeout=120)
    quality = await measure_quality(
        identity.application, labelled, person_ids, threshold=DEFAULT_THRESHOLD
    )
    await identity.close()
    return (
        quality.precision,
        quality.recall,
        len(labelled.duplicate_pairs),
        len(labelled.twin_pairs),
    )


async def main() -> None:
    async with scratch_database("throughline_bench") as dsn:
        await run(dsn)


async def run(dsn: str) -> None:
    pool = await create_pool(dsn, min_size=4, max_size=24)
    try:
        identity = await bootstrap(pool, schema="bench_identity", cipher_key="")
        progress(f"generating {PEOPLE:,} synthetic people")
        people = population(PEOPLE, seed=3)
        append_rate, index_rate = await load(identity, people)
        queries = mixed_queries(people, random.Random(9))
        by_name = name_only_queries(people, random.Random(10))
        # The synthetic population is the benchmark's, not the service's: a service
        # process does not hold a million people in memory. Kept, its millions of objects
        # would be traversed by every full garbage collection during the load runs.
        del people
        gc.collect()

        identity.start_projection()
        verifier = TokenVerifier(SECRET)
        server = build_server(identity, verifier)
        port = await server.start()
        metadata = (("authorization", f"Bearer {verifier.mint('bench', ['identity.write'])}"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            progress(f"{QUERIES:,} searches against {PEOPLE:,} people")
            latencies = await bench_search(stub, metadata, queries)
            progress(f"{NAME_ONLY_QUERIES:,} searches by name alone")
            by_name_latencies = await bench_search(stub, metadata, by_name)
        loop_ns = python_loop_ns()
        alternation = await register_next_to_echo(
            port, verifier.mint("bench", ["identity.write"]), first=50_000_000
        )
        window_ms = identity.store.batch_window * 1000  # where the adaptive window ended
        await server.stop(1)
        await identity.close()
        progress("match quality on a labelled synthetic set")
        precision, recall, duplicates, twins = await bench_quality(pool)
    finally:
        await pool.close()

    quantiles = statistics.quantiles(latencies, n=100)
    by_name_quantiles = statistics.quantiles(by_name_latencies, n=100)
    echo, register = alternation.echo, alternation.register
    echo_rate, register_rate = echo.rate, register.rate
    print(f"\nIdentity benchmark — {PEOPLE:,} people, {os.cpu_count()} cores")
    rows = [
        ("bulk load through the event store (people/s)", append_rate, ""),
        ("search index projection (people/s)", index_rate, ""),
        ("SearchPeople p50 (ms)", quantiles[49], ""),
        ("SearchPeople p99 (ms)", quantiles[98], "target <= 20"),
        ("SearchPeople by name alone p50 (ms)", by_name_quantiles[49], "not in the mix"),
        ("SearchPeople by name alone p99 (ms)", by_name_quantiles[98], ""),
        ("gRPC echo, 16 clients (requests/s)", echo_rate, "baseline"),
        (
            "RegisterPerson, 16 clients (commands/s)",
            register_rate,
            f"{alternation.ratio:.2f} of echo",
        ),
        (
            f"RegisterPerson / echo, lowest of {len(alternation.round_ratios)} rounds",
            alternation.lowest,
            f"highest {alternation.highest:.3f}",
        ),
        (
            f"precision at {DEFAULT_THRESHOLD} ({duplicates} duplicates, {twins} twins)",
            precision,
            "",
        ),
        (f"recall at {DEFAULT_THRESHOLD}", recall, ""),
        ("server CPU per echo call (ms)", echo.server_cpu_ms, "all threads"),
        ("server CPU per RegisterPerson (ms)", register.server_cpu_ms, "all threads"),
    ]
    for name, run_ in (("echo", echo), ("RegisterPerson", register)):
        rows.append((f"server event loop on a CPU, {name} (%)", run_.loop_busy * 100, ""))
        if run_.loop_runnable is not None:
            rows.append(
                (
                    f"server event loop waiting for a CPU, {name} (%)",
                    run_.loop_runnable * 100,
                    "the rest: idle",
                )
            )
    if register.database_cpu_ms is not None:
        rows.append(("PostgreSQL CPU per RegisterPerson (ms)", register.database_cpu_ms, ""))
    # When both loads keep every core busy, their rates cannot differ by more than their
    # CPU per call on the whole machine: the ratio no scheduling could beat here.
    ceiling = echo.machine_cpu_ms / register.machine_cpu_ms
    rows += [
        ("load client CPU per echo call (ms)", echo.client_cpu_ms, ""),
        ("load client CPU per RegisterPerson (ms)", register.client_cpu_ms, ""),
        ("machine CPU per echo call (ms)", echo.machine_cpu_ms, "server + client + PostgreSQL"),
        (
            "machine CPU per RegisterPerson (ms)",
            register.machine_cpu_ms,
            "server + client + PostgreSQL",
        ),
        ("register_vs_echo if both used every core", ceiling, f"{os.cpu_count()} cores"),
        ("write window after the RegisterPerson rounds (ms)", window_ms, "adaptive"),
        ("plain Python loop (ns per addition)", loop_ns, "this machine's speed now"),
    ]
    for label, value, note in rows:
        print(f"{label:<58}{value:>14,.3f}  {note}")
    print()
    print(f"load_people_per_s={append_rate:.0f}")
    print(f"index_people_per_s={index_rate:.0f}")
    print(f"search_p50_ms={quantiles[49]:.2f}")
    print(f"search_name_only_p50_ms={by_name_quantiles[49]:.2f}")
    print(f"search_name_only_p99_ms={by_name_quantiles[98]:.2f}")
    print(f"echo_per_s={echo_rate:.0f}")
    print(f"register_per_s={register_rate:.0f}")
    print(f"register_vs_echo_lowest_round={alternation.lowest:.2f}")
    print(f"register_vs_echo_highest_round={alternation.highest:.2f}")
    print(f"register_vs_echo_cpu_ceiling={ceiling:.2f}")
    print(f"register_loop_busy={register.loop_busy:.2f}")
    if register.loop_runnable is not None:
        print(f"register_loop_waiting_for_cpu={register.loop_runnable:.2f}")
    print(f"register_write_window_ms={window_ms:.2f}")
    print(f"python_loop_ns={loop_ns:.1f}")
    # The four figures last, in its order.
    print(f"search_p99_ms={quantiles[98]:.2f}")
    print(f"match_precision={precision:.3f}")
    print(f"match_recall={recall:.3f}")
    print(f"register_vs_echo={alternation.ratio:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
