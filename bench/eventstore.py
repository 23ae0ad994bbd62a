"""Event store benchmark (`make bench-eventstore`). Not a test: it prints figures, each
with a baseline measured in the same run on the same PostgreSQL, and ends with
machine-readable `name=value` lines.

- appends/s with 8 concurrent writers, one single-event append per call, against a plain
  single-row INSERT through asyncpg on 8 connections and the eventsourcing library's own
  PostgreSQL recorder (8 threads);
- p50/p99 append latency;
- read_all and subscribe catch-up over 100,000+ events;
- skipped/duplicated events seen by a tailing subscriber during the concurrent run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit
from uuid import uuid4

import asyncpg
from eventsourcing.persistence import StoredEvent

from infra.postgres import scratch_database
from libs.eventstore import EventStore, create_pool, create_schema
from libs.eventstore.database import library_datastore

WRITERS = 8
DURATION = float(os.environ.get("BENCH_SECONDS", "5"))
CATCHUP_EVENTS = int(os.environ.get("BENCH_CATCHUP_EVENTS", "200000"))
STATE = b'{"given_names":"Ann","family_name":"Example","date_of_birth":"1980-01-01"}'


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


async def timed_loop(worker, count: int) -> tuple[int, float, list[float]]:
    """Runs `count` copies of `worker` for DURATION seconds; returns ops, seconds, latencies."""
    stop_at = time.perf_counter() + DURATION
    latencies: list[float] = []

    async def loop(i: int) -> int:
        n = 0
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await worker(i)
            latencies.append(time.perf_counter() - started)
            n += 1
        return n

    started = time.perf_counter()
    counts = await asyncio.gather(*(loop(i) for i in range(count)))
    return sum(counts), time.perf_counter() - started, latencies


async def bench_plain_insert(dsn: str) -> float:
    pool = await asyncpg.create_pool(dsn, min_size=WRITERS, max_size=WRITERS)
    await pool.execute(
        "CREATE TABLE plain_insert (id bigserial PRIMARY KEY, stream uuid, version int, "
        "topic text, state bytea)"
    )

    async def insert(_: int) -> None:
        await pool.execute(
            "INSERT INTO plain_insert (stream, version, topic, state) VALUES ($1, 1, $2, $3)",
            uuid4(),
            "PersonRegistered",
            STATE,
        )

    ops, seconds, _ = await timed_loop(insert, WRITERS)
    await pool.close()
    return ops / seconds


def bench_library_recorder(dsn: str) -> float:
    from eventsourcing.postgres import PostgresApplicationRecorder

    datastore = library_datastore(dsn, "library_recorder", pool_size=WRITERS, max_overflow=0)
    with datastore.transaction(commit=True) as curs:
        curs.execute("CREATE SCHEMA IF NOT EXISTS library_recorder")
    recorder = PostgresApplicationRecorder(datastore)
    recorder.create_table()
    stop_at = time.perf_counter() + DURATION
    counts = [0] * WRITERS

    def loop(i: int) -> None:
        while time.perf_counter() < stop_at:
            recorder.insert_events([StoredEvent(uuid4(), 1, "PersonRegistered", STATE)])
            counts[i] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(loop, range(WRITERS)))
    seconds = time.perf_counter() - started
    datastore.close()
    return sum(counts) / seconds


async def bench_event_store(dsn: str) -> dict[str, float]:
    """Appends/s and latency with 8 writers (compared like for like with the baselines,
    which have no reader), then a second run with a tailing subscriber that must see
    every event exactly once."""
    pool = await create_pool(dsn, min_size=4, max_size=12)
    async with pool.acquire() as conn:
        await create_schema(conn, "bench_append")
    store = EventStore(pool, "bench_append", poll_interval=0.05)

    async def append(_: int) -> None:
        await store.append([StoredEvent(uuid4(), 1, "PersonRegistered", STATE)])

    ops, seconds, latencies = await timed_loop(append, WRITERS)
    quantiles = statistics.quantiles(latencies, n=100)

    progress("again, with a tailing subscriber")
    reader = EventStore(pool, "bench_append", poll_interval=0.05)
    start = await store.head_position()
    seen: list[int] = []
    progressed = asyncio.Event()

    async def tail() -> None:
        async for batch in reader.subscribe_batches(start, batch_size=1000):
            seen.extend(e.position for e in batch)
            progressed.set()

    async def caught_up(head: int) -> None:
        while True:
            progressed.clear()
            if seen and seen[-1] >= head:
                return
            await progressed.wait()

    tailer = asyncio.create_task(tail())
    tailed_ops, tailed_seconds, _ = await timed_loop(append, WRITERS)
    head = await store.head_position()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(caught_up(head), 30)
    tailer.cancel()
    skipped = len(set(range(start + 1, head + 1)) - set(seen))
    duplicated = len(seen) - len(set(seen))
    await reader.close()
    await store.close()
    await pool.close()
    return {
        "rate": ops / seconds,
        "rate_tailed": tailed_ops / tailed_seconds,
        "p50_ms": quantiles[49] * 1000,
        "p99_ms": quantiles[98] * 1000,
        "skipped": skipped,
        "duplicated": duplicated,
        "tailed": len(seen),
    }


async def bench_catch_up(dsn: str) -> dict[str, float]:
    pool = await create_pool(dsn, min_size=4, max_size=8)
    async with pool.acquire() as conn:
        await create_schema(conn, "bench_catchup")
    store = EventStore(pool, "bench_catchup")
    written = 0
    chunk = 1000
    progress(f"loading {CATCHUP_EVENTS:,} events for catch-up")
    while written < CATCHUP_EVENTS:
        await asyncio.gather(
            *(
                store.append([StoredEvent(uuid4(), v, "PersonRegistered", STATE) for v in (1, 2)])
                for _ in range(chunk // 2)
            )
        )
        written += chunk
        if written % 50_000 == 0:
            progress(f"loaded {written:,}")
    head = await store.head_position()

    async def read_all_pass() -> float:
        started = time.perf_counter()
        after = 0
        while after < head:
            batch = await store.read_all(after, 5000)
            after = batch[-1].position
        return head / (time.perf_counter() - started)

    async def subscribe_pass() -> float:
        started = time.perf_counter()
        count = 0
        async for batch in store.subscribe_batches(0, batch_size=5000):
            count += len(batch)
            if batch[-1].position >= head:
                break
        return count / (time.perf_counter() - started)

    # The first read of freshly written rows also sets their hint bits (a write per
    # page); later reads, like a consumer catching up on anything but the last seconds,
    # do not. Both are reported.
    cold = await read_all_pass()
    read_all_rate = max([await read_all_pass() for _ in range(3)])
    subscribe_rate = max([await subscribe_pass() for _ in range(3)])
    await store.close()
    await pool.close()
    return {
        "events": head,
        "cold": cold,
        "read_all": read_all_rate,
        "subscribe": subscribe_rate,
    }


async def main() -> None:
    async with scratch_database("throughline_bench") as dsn:
        await run(dsn)


async def run(dsn: str) -> None:
    progress(f"plain INSERT baseline, {WRITERS} connections, {DURATION:.0f}s")
    plain = await bench_plain_insert(dsn)
    progress(f"eventsourcing PostgresApplicationRecorder, {WRITERS} threads")
    library = await asyncio.to_thread(bench_library_recorder, dsn)
    progress(f"our event store, {WRITERS} concurrent writers")
    ours = await bench_event_store(dsn)
    catch_up = await bench_catch_up(dsn)

    server = urlsplit(dsn)
    where = "embedded" if "host=/" in server.query or not server.hostname else server.hostname
    print(f"\nEvent store benchmark — PostgreSQL: {where}, {os.cpu_count()} cores")
    print(f"{'measure':<48}{'value':>14}  ratio to plain INSERT")
    rows = [
        ("plain INSERT, 8 connections (appends/s)", plain, "1.00 (baseline)"),
        ("eventsourcing recorder, 8 threads (appends/s)", library, f"{library / plain:.2f}"),
        ("event store, 8 writers (appends/s)", ours["rate"], f"{ours['rate'] / plain:.2f}"),
        ("  vs the eventsourcing recorder", ours["rate"] / library, "x"),
        (
            "event store, 8 writers + tailing reader",
            ours["rate_tailed"],
            f"{ours['rate_tailed'] / plain:.2f}",
        ),
        ("append latency p50 (ms)", ours["p50_ms"], ""),
        ("append latency p99 (ms)", ours["p99_ms"], ""),
        (f"read_all, first read of {catch_up['events']:,} new events/s", catch_up["cold"], ""),
        (f"read_all catch-up over {catch_up['events']:,} (events/s)", catch_up["read_all"], ""),
        (f"subscribe catch-up over {catch_up['events']:,} (events/s)", catch_up["subscribe"], ""),
        ("tailing subscriber: events skipped", ours["skipped"], ""),
        ("tailing subscriber: events duplicated", ours["duplicated"], ""),
    ]
    for label, value, ratio in rows:
        print(f"{label:<48}{value:>14,.2f}  {ratio}")
    print()
    print(f"append_per_s={ours['rate']:.0f}")
    print(f"plain_insert_per_s={plain:.0f}")
    print(f"eventsourcing_recorder_per_s={library:.0f}")
    print(f"append_vs_plain_insert={ours['rate'] / plain:.2f}")
    print(f"append_vs_eventsourcing_recorder={ours['rate'] / library:.2f}")
    print(f"append_p50_ms={ours['p50_ms']:.2f}")
    print(f"append_p99_ms={ours['p99_ms']:.2f}")
    print(f"catchup_events_per_s={min(catch_up['read_all'], catch_up['subscribe']):.0f}")
    print(f"read_all_events_per_s={catch_up['read_all']:.0f}")
    print(f"catchup_first_read_events_per_s={catch_up['cold']:.0f}")
    print(f"append_with_tailer_per_s={ours['rate_tailed']:.0f}")
    print(f"subscribe_events_per_s={catch_up['subscribe']:.0f}")
    print(f"skipped_events={ours['skipped']}")
    print(f"duplicated_events={ours['duplicated']}")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    asyncio.run(main())
