"""Audit replay. `audit_store` proves a store is as it was recorded: positions gapless up
to the head, recording times never going backwards, and every stream's hash chain
intact. `verify_projection` proves a projection's view is what its events make: it
rebuilds the view from the events beside the live one and compares them, row by row.
`projection_as_at` rebuilds a view as it stood at a past position, to query it."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg

from libs.eventstore.hashchain import verify_stream
from libs.eventstore.projection import Projection
from libs.eventstore.recorder import EVENT_COLUMNS, EventStore, quote_schema
from libs.eventstore.records import RecordedEvent
from libs.eventstore.tracking import TrackingStore

EXAMPLES = 3  # rows shown of each kind of difference
P = TypeVar("P", bound=Projection)


@dataclass
class AuditReport:
    events_checked: int = 0
    streams_checked: int = 0
    head_position: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


async def audit_store(
    store: EventStore, *, progress: Callable[[int, int], None] | None = None
) -> AuditReport:
    s = quote_schema(store.schema)
    report = AuditReport(head_position=await store.head_position())
    async with (
        store.pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        count, highest = await conn.fetchrow(
            f"SELECT count(*), coalesce(max(notification_id), 0) FROM {s}.stored_events"
        )
        if highest != report.head_position or count != highest:
            gaps = await conn.fetch(
                f"SELECT prev + 1 AS first, notification_id - 1 AS last FROM ("
                f"  SELECT notification_id, coalesce(lag(notification_id) OVER "
                f"  (ORDER BY notification_id), 0) AS prev FROM {s}.stored_events) AS t "
                f"WHERE notification_id - prev > 1 LIMIT 100"
            )
            for first, last in gaps:
                report.problems.append(f"positions {first}..{last} are missing")
            if highest < report.head_position:
                report.problems.append(
                    f"positions {highest + 1}..{report.head_position} are missing "
                    "(the head says they were recorded)"
                )
        backwards = await conn.fetch(
            f"SELECT notification_id FROM (SELECT notification_id, recorded_at, "
            f"lag(recorded_at) OVER (ORDER BY notification_id) AS prev "
            f"FROM {s}.stored_events) AS t WHERE recorded_at < prev LIMIT 100"
        )
        for (position,) in backwards:
            report.problems.append(f"position {position} was recorded before its predecessor")

        stream: list[RecordedEvent] = []
        cursor = conn.cursor(
            f"SELECT {EVENT_COLUMNS} FROM {s}.stored_events "
            f"ORDER BY originator_id, originator_version",
            prefetch=5000,
            record_class=RecordedEvent,
        )
        async for event in cursor:
            if stream and stream[-1].originator_id != event.originator_id:
                _check(stream, report)
                if progress:
                    progress(report.events_checked, count)
                stream = []
            stream.append(event)
        if stream:
            _check(stream, report)
        if progress:
            progress(report.events_checked, count)
    return report


def _check(stream: list[RecordedEvent], report: AuditReport) -> None:
    report.problems.extend(verify_stream(stream))
    report.events_checked += len(stream)
    report.streams_checked += 1


@dataclass(frozen=True)
class TableComparison:
    """One table of a view, live against rebuilt: rows only in one or the other (a row
    kept twice in one and once in the other counts once), with a few as examples."""

    table: str
    live_rows: int
    rebuilt_rows: int
    only_live: int
    only_rebuilt: int
    only_live_examples: tuple[str, ...] = ()
    only_rebuilt_examples: tuple[str, ...] = ()

    @property
    def matches(self) -> bool:
        return self.only_live == 0 and self.only_rebuilt == 0


@dataclass(frozen=True)
class ProjectionCheck:
    projection: str
    position: int  # the upstream position the live view had applied, and the rebuild to
    tables: tuple[TableComparison, ...]
    # Scratch schemas an earlier verification left when it was killed, dropped by this one.
    dropped_leftovers: tuple[str, ...] = ()

    @property
    def matches(self) -> bool:
        return all(table.matches for table in self.tables)


async def verify_projection(
    store: EventStore,
    tracking: TrackingStore,
    projection_name: str,
    tables: Sequence[str],
    build: Callable[[asyncpg.Connection, str], Awaitable[Projection]],
    *,
    upstream: str | None = None,
    batch_size: int = 1000,
    progress: Callable[[int, int], None] | None = None,
) -> ProjectionCheck:
    """Rebuilds a projection's view from `store`'s events and compares it with the live
    view in `store`'s schema, table by table, while the service goes on writing.

    `build(conn, schema)` creates the view's tables in another schema and returns the
    projection writing there. In one snapshot, the live tables are copied with the
    position their projection had applied; the events up to that position are applied
    to the new tables; then the two are compared. The scratch schema is dropped after
    (see `scratch_schema`). `progress(position, target)` is called after every batch."""
    upstream = upstream or store.schema
    live = quote_schema(store.schema)
    async with scratch_schema(store) as (conn, scratch_name, leftovers):
        scratch = quote_schema(scratch_name)
        projection = await build(conn, scratch_name)
        async with conn.transaction(isolation="repeatable_read"):
            position = await tracking.position(projection_name, upstream, conn=conn) or 0
            for table in tables:
                await conn.execute(
                    f"CREATE TABLE {scratch}.{_live_copy(table)} AS "
                    f"SELECT * FROM {live}.{quote_schema(table)}"
                )
        await _replay(store, projection, conn, position, batch_size, progress)
        compared = [await _compare(conn, scratch, table) for table in tables]
    return ProjectionCheck(projection_name, position, tuple(compared), leftovers)


@asynccontextmanager
async def projection_as_at(
    store: EventStore,
    build: Callable[[asyncpg.Connection, str], Awaitable[P]],
    position: int,
    *,
    batch_size: int = 1000,
    progress: Callable[[int, int], None] | None = None,
) -> AsyncIterator[P]:
    """A projection's view as it stood when the store's head was at `position`, rebuilt
    from the events up to there in a scratch schema of its own, for the length of the
    block: `build(conn, schema)` creates its tables there and returns the projection,
    which the block queries. Dropped after (see `scratch_schema`)."""
    async with scratch_schema(store) as (conn, scratch_name, _):
        projection = await build(conn, scratch_name)
        await _replay(store, projection, conn, position, batch_size, progress)
        yield projection


@asynccontextmanager
async def scratch_schema(
    store: EventStore,
) -> AsyncIterator[tuple[asyncpg.Connection, str, tuple[str, ...]]]:
    """A new, empty schema beside `store`'s for the length of the block, with a pooled
    connection to work in and the names of the scratch schemas it dropped first.

    While the block runs, the connection holds a session advisory lock named after the
    schema, so a block whose process was killed (its connection gone, its lock with it)
    is told apart from one still running: the next scratch schema drops what the killed
    one left."""
    prefix = f"{store.schema[:40]}_scratch_"
    name = f"{prefix}{secrets.token_hex(4)}"
    async with store.pool.acquire() as conn:
        await conn.execute(f"SELECT pg_advisory_lock({SCRATCH_LOCKS}, hashtext($1))", name)
        try:
            await conn.execute(f"CREATE SCHEMA {quote_schema(name)}")
            try:
                yield conn, name, await _drop_leftovers(conn, prefix, name)
            finally:
                await conn.execute(f"DROP SCHEMA IF EXISTS {quote_schema(name)} CASCADE")
        finally:
            await _unlock(conn, name)


async def _replay(
    store: EventStore,
    projection: Projection,
    conn: asyncpg.Connection,
    position: int,
    batch_size: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Applies the store's events up to `position` to `projection`, on `conn`."""
    after = 0
    while after < position:
        batch = await store.read_all(after, batch_size, upto=position)
        if not batch:
            break
        async with conn.transaction():
            await projection.apply(conn, batch)
        after = batch[-1].position
        if progress:
            progress(after, position)


# The first key of the two-key advisory locks held on scratch schemas (a lock space of
# its own: the store's single-key locks never meet these).
SCRATCH_LOCKS = 0x7E21F1ED


async def _drop_leftovers(conn: asyncpg.Connection, prefix: str, own: str) -> tuple[str, ...]:
    """Drops the scratch schemas named `prefix` + 8 hex digits whose holder is gone: no
    session holds their lock. `own` is this session's (its lock would be granted again
    to the session holding it)."""
    dropped = []
    for (name,) in await conn.fetch(
        "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1) ORDER BY nspname",
        prefix,
    ):
        if name == own or not re.fullmatch(re.escape(prefix) + "[0-9a-f]{8}", name):
            continue
        if not await conn.fetchval(
            f"SELECT pg_try_advisory_lock({SCRATCH_LOCKS}, hashtext($1))", name
        ):
            continue  # in use now
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote_schema(name)} CASCADE")
            dropped.append(name)
        finally:
            await _unlock(conn, name)
    return tuple(dropped)


async def _unlock(conn: asyncpg.Connection, scratch_name: str) -> None:
    # Pool connections go back without a reset (libs.eventstore.database), so a lock that
    # cannot be released takes its connection with it rather than going back held.
    try:
        await conn.execute(
            f"SELECT pg_advisory_unlock({SCRATCH_LOCKS}, hashtext($1))", scratch_name
        )
    except BaseException:
        conn.terminate()
        raise


def _live_copy(table: str) -> str:
    return quote_schema(f"live_{table}")


async def _compare(conn: asyncpg.Connection, scratch: str, table: str) -> TableComparison:
    rebuilt, copy = f"{scratch}.{quote_schema(table)}", f"{scratch}.{_live_copy(table)}"
    # The rebuilt table's columns, by name: a live table altered since it was created
    # may hold the same columns in another order.
    columns = ", ".join(
        quote_schema(name)
        for (name,) in await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            rebuilt,
        )
    )

    async def only_in(first: str, second: str) -> tuple[int, tuple[str, ...]]:
        difference = f"SELECT {columns} FROM {first} EXCEPT ALL SELECT {columns} FROM {second}"
        count = await conn.fetchval(f"SELECT count(*) FROM ({difference}) AS d")
        rows = await conn.fetch(
            f"SELECT d::text FROM ({difference}) AS d ORDER BY 1 LIMIT {EXAMPLES}"
        )
        return count, tuple(row[0] for row in rows)

    only_live, live_examples = await only_in(copy, rebuilt)
    only_rebuilt, rebuilt_examples = await only_in(rebuilt, copy)
    return TableComparison(
        table,
        await conn.fetchval(f"SELECT count(*) FROM {copy}"),
        await conn.fetchval(f"SELECT count(*) FROM {rebuilt}"),
        only_live,
        only_rebuilt,
        live_examples,
        rebuilt_examples,
    )
