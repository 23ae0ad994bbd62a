"""The async event store: appends through one writer task per store, reads by stream and by
position, and follows live appends.

Positions are handed out inside the append transaction while it holds the store's head
row, so they are gapless and become visible in order: a reader that asks for everything
after the last position it saw can never skip an event that commits late. Concurrent
appends are grouped into one transaction by the writer task, so the head row costs one
lock per group rather than one per event, and one commit (one WAL flush) serves them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, NamedTuple
from uuid import UUID

import asyncpg
from eventsourcing.persistence import StoredEvent

from libs.eventstore.database import session_ended
from libs.eventstore.errors import (
    CommandReusedError,
    ConcurrencyError,
    EventStoreClosedError,
    EventStoreError,
    InvalidAppendError,
)
from libs.eventstore.hashchain import GENESIS, chain, command_part
from libs.eventstore.records import (
    AppendMetadata,
    AppendResult,
    RecordedEvent,
    StreamHead,
    to_micros,
)
from libs.eventstore.wakeup import Wakeups
from libs.eventstore.window import AdaptiveWindow

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).parent / "sql"
SCHEMA_FILES: Final = (
    "tables/stored_events.sql",
    "tables/stored_events_command_digest.sql",
    "tables/stored_events_head.sql",
    "tables/snapshots.sql",
    "tables/projection_tracking.sql",
    "indexes/stored_events_notification_id.sql",
    "indexes/stored_events_command_id.sql",
)
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

INSERT_COLUMNS: Final = (
    "notification_id, originator_id, originator_version, topic, state, "
    "recorded_at, command_id, actor, trace_id, hash, command_digest"
)
_ARRAYS: Final = 9  # columns the writer passes as arrays: all but position and recorded_at
# What reads select, in RecordedEvent's order. The recording time comes as integer
# microseconds: PostgreSQL computes that faster than the client can build datetimes.
EVENT_COLUMNS: Final = (
    "notification_id, originator_id, originator_version, topic, state, "
    "(extract(epoch FROM recorded_at) * 1000000)::int8, command_id, actor, trace_id, hash"
)


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


def quote_schema(schema: str) -> str:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"schema name {schema!r} must match {_SCHEMA_NAME.pattern}")
    return f'"{schema}"'


async def create_schema(conn: asyncpg.Connection, schema: str) -> None:
    """Creates the store's tables in `schema` if they are missing (idempotent)."""
    quoted = quote_schema(schema)
    async with conn.transaction():
        # Serialise concurrent creators of the same schema (several test workers or
        # services starting at once) so CREATE ... IF NOT EXISTS cannot race.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"schema:{schema}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        for name in SCHEMA_FILES:
            await conn.execute((SQL_DIR / name).read_text().format(schema=quoted))


@dataclass
class _PendingAppend:
    events: Sequence[StoredEvent]
    metadata: AppendMetadata
    expected_version: int | _Unset
    future: asyncio.Future[AppendResult]


_STOP: Final = object()


class _Queries:
    def __init__(self, schema: str) -> None:
        s = quote_schema(schema)
        # Locks the head row, then reads what the append must check against: each
        # stream's newest version and hash, and events already written by these commands
        # (with, in the hash column, the digest of what each of those commands asked).
        # One statement has one snapshot, taken before any wait for the lock; `visible`
        # tells whether that snapshot already holds everything up to the locked head.
        # When it does not (another writer committed meanwhile), `recheck` reads again.
        self.lock_and_check = f"""
            WITH head AS (
                SELECT last_position,
                       greatest(clock_timestamp(), last_recorded_at) AS recorded_at
                FROM {s}.stored_events_head FOR UPDATE
            )
            SELECT 0 AS kind, NULL::uuid AS id, last_position AS n, recorded_at AS at,
                   NULL::bytea AS hash, NULL::uuid AS command_id,
                   (SELECT coalesce(max(notification_id), 0) FROM {s}.stored_events) AS visible
            FROM head
            UNION ALL {{checks}}
        """
        # One index probe per stream (newest version first) and one per command,
        # whatever the planner's statistics say. A plain `= ANY($n)` can turn into a
        # sequential scan on a table the planner has not analysed yet, and PostgreSQL
        # keeps a prepared statement's generic plan until the next ANALYZE: then every
        # append reads the whole store. (`OFFSET 0` keeps each command's probe a
        # subquery of its own, which the planner would otherwise turn into a join.)
        self.checks = f"""
            SELECT 1, newest.originator_id, newest.originator_version, NULL, newest.hash,
                   NULL, NULL
            FROM unnest($1::uuid[]) AS wanted(id)
            CROSS JOIN LATERAL (
                SELECT originator_id, originator_version, hash FROM {s}.stored_events
                WHERE originator_id = wanted.id
                ORDER BY originator_version DESC LIMIT 1
            ) AS newest
            UNION ALL
            SELECT 2, done.*
            FROM unnest($2::uuid[]) AS asked(id)
            CROSS JOIN LATERAL (
                SELECT originator_id, originator_version, recorded_at, command_digest,
                       command_id, notification_id
                FROM {s}.stored_events WHERE command_id = asked.id
                OFFSET 0
            ) AS done
        """
        self.lock_and_check = self.lock_and_check.format(checks=self.checks)
        self.recheck = f"SELECT * FROM ({self.checks}) AS checks"
        # The optimistic path reads the same without a lock or a transaction: one
        # snapshot holds the head and every event up to it, since both commit together.
        self.check = f"""
            SELECT 0 AS kind, NULL::uuid AS id, last_position AS n,
                   greatest(clock_timestamp(), last_recorded_at) AS at,
                   NULL::bytea AS hash, NULL::uuid AS command_id, last_position AS visible
            FROM {s}.stored_events_head
            UNION ALL {self.checks}
        """
        # The new events arrive as one array per column but their position and recording
        # time: the group's events take the positions after the head ($12) in order, and
        # all were recorded at $11 (the head's new recording time).
        insert = f"""
            INSERT INTO {s}.stored_events ({INSERT_COLUMNS})
            SELECT $12 + e.n, e.originator_id, e.originator_version, e.topic, e.state, $11,
                   e.command_id, e.actor, e.trace_id, e.hash, e.command_digest
            FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::bytea[], $5::uuid[],
                        $6::text[], $7::text[], $8::bytea[], $9::bytea[])
                 WITH ORDINALITY AS e(originator_id, originator_version, topic, state,
                                      command_id, actor, trace_id, hash, command_digest, n)
        """
        self.insert_and_advance = f"""
            WITH inserted AS ({insert})
            UPDATE {s}.stored_events_head SET last_position = $10, last_recorded_at = $11
        """
        # ...and then writes in one statement (its own transaction) only if the head is
        # still where the check saw it; otherwise nothing is written and it returns 0.
        # The head row is locked only while this statement runs and commits.
        self.insert_if_head_unmoved = f"""
            WITH advanced AS (
                UPDATE {s}.stored_events_head SET last_position = $10, last_recorded_at = $11
                WHERE last_position = $12
                RETURNING last_position
            ), inserted AS ({insert} WHERE EXISTS (SELECT FROM advanced))
            SELECT count(*) FROM advanced
        """
        self.head_position = f"SELECT last_position FROM {s}.stored_events_head"
        self.position_at = (
            f"SELECT coalesce(max(notification_id), 0) FROM {s}.stored_events "
            f"WHERE recorded_at <= $1"
        )
        self.command_events = (
            f"SELECT notification_id, originator_id, originator_version, recorded_at, "
            f"command_digest FROM {s}.stored_events WHERE command_id = $1 "
            f"ORDER BY notification_id"
        )
        self.read_all = (
            f"SELECT {EVENT_COLUMNS} FROM {s}.stored_events "
            f"WHERE notification_id > $1 AND notification_id <= $2 "
            f"ORDER BY notification_id LIMIT $3"
        )
        self.read_all_topics = (
            f"SELECT {EVENT_COLUMNS} FROM {s}.stored_events "
            f"WHERE notification_id > $1 AND notification_id <= $2 AND topic = ANY($4::text[]) "
            f"ORDER BY notification_id LIMIT $3"
        )
        self.read_stream = (
            f"SELECT {EVENT_COLUMNS} FROM {s}.stored_events WHERE originator_id = $1 "
            f"AND originator_version > $2 AND originator_version <= $3 "
            f"ORDER BY originator_version {{order}} LIMIT $4"
        )
        self.notify_channel = f"{schema}_stored_events"


class EventStore:
    """One service's event store, in one PostgreSQL schema.

    `append` may be called from many tasks at once; a single writer task per store turns
    whatever is queued into one transaction. The store holds one pooled connection for the
    writer and, while anyone subscribes, one for LISTEN.

    With a `batch_window` (seconds), while appends keep arriving together (the last group
    held more than one) groups start at least that far apart, so each gathers more
    appends: fewer transactions, commits and round trips per append, at the cost of up
    to that much more latency. A lone append after a quiet spell, or a single caller's
    appends one after another, are written at once. With `adapt_window`, the window is
    adjusted while serving, to keep the event loop busy (see `libs.eventstore.window`).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        *,
        max_batch_events: int = 5000,
        poll_interval: float = 1.0,
        notify: bool = True,
        optimistic_attempts: int = 3,
        notify_interval: float = 0.005,
        batch_window: float = 0.0,
        adapt_window: AdaptiveWindow | None = None,
    ) -> None:
        self.pool = pool
        self.schema = schema
        self.max_batch_events = max_batch_events
        self.optimistic_attempts = optimistic_attempts
        self.notify_interval = notify_interval
        self.poll_interval = poll_interval
        self.batch_window = batch_window
        self.adapt_window = adapt_window
        self._group_started = 0.0  # loop time the last group started
        self._group_shared = False  # whether it held more than one append
        self._notify = notify
        self._q = _Queries(schema)
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._writer_conn: asyncpg.pool.PoolConnectionProxy | None = None
        self._notifier: asyncio.Task[None] | None = None
        self._notify_wanted = asyncio.Event()
        self._closed = False
        self.lost_races = 0  # optimistic writes that found the head moved: contention
        self.groups = 0  # transactions the writer has started, one per group of appends
        self.grouped_appends = 0  # appends in those groups (over `groups`: their mean size)
        self.held_groups = 0  # groups held back to gather more appends (`batch_window`)
        self.wakeups = Wakeups(pool, self._q.notify_channel)

    # ----------------------------------------------------------------- set-up / tear-down

    async def create_schema(self) -> None:
        async with self.pool.acquire() as conn:
            await create_schema(conn, self.schema)

    async def close(self) -> None:
        """Writes what is already queued, then stops the writer and the listener."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None and not self._writer.done():
            self._queue.put_nowait(_STOP)
            await self._writer
        if self._notifier is not None:
            self._notifier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._notifier
        await self.wakeups.close()

    # ------------------------------------------------------------------------- appending

    async def append(
        self,
        events: Sequence[StoredEvent],
        *,
        command_id: UUID | None = None,
        expected_version: int | _Unset = UNSET,
        actor: str | None = None,
        trace_id: str | None = None,
        command_digest: bytes | None = None,
    ) -> AppendResult:
        """Appends `events` atomically, possibly across several streams.

        Each stream's events must have consecutive versions; the first must follow the
        stream's current version (any version starts a new stream). `expected_version`,
        for a single-stream append, states the version the stream must be at now (0 for
        a stream with no events). A `command_id` already recorded returns the original
        result and appends nothing: the append is a retry. When both it and the recorded
        command carry a `command_digest` (see `command_digest()`) and the two differ, it
        is not a retry but another command sent with the same id, and is refused.

        Raises ConcurrencyError if a stream has moved on, InvalidAppendError for an append
        that could never succeed, CommandReusedError for a command id already used for a
        different command.
        """
        if self._closed:
            raise EventStoreClosedError(f"event store {self.schema!r} is closed")
        _check_consecutive(events, expected_version)
        if not events:
            return AppendResult(positions=(), streams=(), recorded_at=None)
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(
            _PendingAppend(
                events=events,
                metadata=AppendMetadata(command_id, actor, trace_id, command_digest),
                expected_version=expected_version,
                future=future,
            )
        )
        if self._writer is None or self._writer.done():  # first append, or it was stopped
            self._writer = asyncio.create_task(self._run_writer(), name=f"{self.schema}-writer")
        return await future

    async def _run_writer(self) -> None:
        batch: list[_PendingAppend] = []  # taken from the queue, not yet settled
        try:
            stopping = False
            while not stopping:
                item = await self._queue.get()
                if item is _STOP:
                    break
                batch = [item]
                if self._group_shared:
                    await self._gather()
                self._group_started = asyncio.get_running_loop().time()
                size = len(item.events)
                while size < self.max_batch_events and not self._queue.empty():
                    item = self._queue.get_nowait()
                    if item is _STOP:
                        stopping = True
                        break
                    batch.append(item)
                    size += len(item.events)
                self._group_shared = self.batch_window > 0 and len(batch) > 1
                batch = [p for p in batch if not p.future.done()]
                if batch:
                    self.groups += 1
                    self.grouped_appends += len(batch)
                    try:
                        await self._write(batch)
                    except Exception as error:
                        # Whatever went wrong, the writer must live on and no caller may
                        # be left waiting: fail this group (a retry with the same command
                        # id is safe) and start the next on a fresh connection.
                        log.exception("event store %s: writing a group failed", self.schema)
                        await self._release_writer_connection(broken=True)
                        for pending in batch:
                            _settle(pending, EventStoreError(f"append outcome unknown: {error}"))
        finally:
            # Stopped (cancelled) while holding or writing a group: its callers must not be
            # left waiting. Whether a group being written committed is unknown.
            for pending in batch:
                _settle(pending, EventStoreError("append outcome unknown: the writer stopped"))
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not _STOP and not item.future.done():
                    item.future.set_exception(
                        EventStoreClosedError(f"event store {self.schema!r} closed")
                    )
            # Nothing more is taken from the queue: an append from now on starts a new
            # writer, which takes a connection of its own while this one goes back.
            if self._writer is asyncio.current_task():
                self._writer = None
            await self._release_writer_connection()

    async def _gather(self) -> None:
        """Waits until `batch_window` after the last group started, so that appends
        arriving meanwhile join the next group."""
        now = asyncio.get_running_loop().time()
        if self.adapt_window is not None:
            self.batch_window = self.adapt_window.adjust(
                self.batch_window, now, self.grouped_appends
            )
        wait = self._group_started + self.batch_window - now
        if wait > 0:
            self.held_groups += 1
            await asyncio.sleep(wait)

    async def _write(self, batch: list[_PendingAppend]) -> None:
        try:
            outcomes = await self._write_batch(batch)
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError) as error:
            # The connection failed: the transaction either committed or not, and we
            # cannot tell which. Callers retry with the same command id, which is safe.
            await self._release_writer_connection(broken=True)
            for pending in batch:
                _settle(pending, EventStoreError(f"append outcome unknown: {error}"))
            return
        except asyncpg.PostgresError as error:
            if len(batch) > 1:
                # One append spoiled the group; write each alone so only it fails.
                for pending in batch:
                    await self._write([pending])
                return
            _settle(batch[0], _translate(error))
            return
        last_position = 0
        for pending, outcome in zip(batch, outcomes, strict=True):
            _settle(pending, outcome)
            if isinstance(outcome, AppendResult) and not outcome.duplicate:
                last_position = max(last_position, outcome.last_position)
        if last_position:
            self.wakeups.wake_local()
            if self._notify:
                self._notify_wanted.set()
                if self._notifier is None:
                    self._notifier = asyncio.create_task(self._run_notifier())

    async def _write_batch(self, batch: list[_PendingAppend]) -> list[AppendResult | Exception]:
        """Writes a group of appends in one transaction.

        First optimistically, in two statements and no explicit transaction: read the
        head, stream heads and earlier commands; then write only if the head has not
        moved. Only another process's writer can move it, so after `optimistic_attempts`
        lost races the group takes the head-row lock instead (four round trips), which
        always makes progress."""
        conn = await self._writer_connection()
        q = self._q
        stream_ids = list(
            {e.originator_id.int: e.originator_id for p in batch for e in p.events}.values()
        )
        command_ids = list({p.metadata.command_id for p in batch if p.metadata.command_id})
        for _ in range(self.optimistic_attempts):
            rows = await conn.fetch(q.check, stream_ids, command_ids)
            plan = _plan(batch, rows)
            if not plan.columns[0]:
                return plan.outcomes
            advanced = await conn.fetchval(
                q.insert_if_head_unmoved,
                *plan.columns,
                plan.last_position,
                plan.recorded_at,
                plan.head_position,
            )
            if advanced:
                return plan.outcomes
            self.lost_races += 1
        async with conn.transaction():
            rows = await conn.fetch(q.lock_and_check, stream_ids, command_ids)
            head = next(r for r in rows if r[0] == 0)
            if head["visible"] != head["n"]:
                rows = [head, *await conn.fetch(q.recheck, stream_ids, command_ids)]
            plan = _plan(batch, rows)
            if plan.columns[0]:
                await conn.execute(
                    q.insert_and_advance,
                    *plan.columns,
                    plan.last_position,
                    plan.recorded_at,
                    plan.head_position,
                )
        return plan.outcomes

    async def _writer_connection(self) -> asyncpg.pool.PoolConnectionProxy:
        if self._writer_conn is not None and session_ended(self._writer_conn):
            # PostgreSQL ended the session while the writer was idle (a restart, or an
            # idle-session timeout): nothing was in flight, so take a fresh connection
            # rather than fail the next append.
            await self._release_writer_connection(broken=True)
        if self._writer_conn is None:
            self._writer_conn = await self.pool.acquire()
        return self._writer_conn

    async def _release_writer_connection(self, *, broken: bool = False) -> None:
        conn, self._writer_conn = self._writer_conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):  # a detached proxy raises; it is back already
            if broken:
                conn.terminate()
            await self.pool.release(conn)

    async def _run_notifier(self) -> None:
        # One NOTIFY per burst of commits, sent outside the write transactions: PostgreSQL
        # serialises notifying commits across the cluster, so it must not sit in each.
        # Under steady load, at most one per `notify_interval`: subscribers in other
        # processes learn of new events that much later at worst, and this process's
        # subscribers are woken directly.
        loop = asyncio.get_running_loop()
        while True:
            await self._notify_wanted.wait()
            self._notify_wanted.clear()
            sent_at = loop.time()
            try:
                await self.pool.execute("SELECT pg_notify($1, '')", self._q.notify_channel)
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as error:
                log.warning("could not notify subscribers of %s: %s", self.schema, error)
                await asyncio.sleep(self.poll_interval)  # they poll meanwhile
            await asyncio.sleep(max(0.0, sent_at + self.notify_interval - loop.time()))

    # -------------------------------------------------------------------------- reading

    async def head_position(self) -> int:
        """The position of the newest event, 0 when the store is empty."""
        return await self.pool.fetchval(self._q.head_position) or 0

    async def position_at(self, moment: datetime) -> int:
        """The position of the newest event recorded by `moment` (0 if none was): the
        store as it was known then is every event up to it, since recording times never
        decrease along positions. Reads every event's time: for audit and review."""
        return await self.pool.fetchval(self._q.position_at, moment)

    async def read_all(
        self,
        after: int = 0,
        limit: int = 1000,
        *,
        upto: int | None = None,
        topics: Sequence[str] = (),
    ) -> list[RecordedEvent]:
        """Events with positions after `after` (and at most `upto`), in position order."""
        upper = upto if upto is not None else 2**63 - 1
        if topics:
            return await self.pool.fetch(
                self._q.read_all_topics,
                after,
                upper,
                limit,
                list(topics),
                record_class=RecordedEvent,
            )
        return await self.pool.fetch(
            self._q.read_all, after, upper, limit, record_class=RecordedEvent
        )

    async def read_stream(
        self,
        stream_id: UUID,
        *,
        after_version: int | None = None,
        upto_version: int | None = None,
        limit: int | None = None,
        desc: bool = False,
    ) -> list[RecordedEvent]:
        """One stream's events in version order (newest first with `desc`)."""
        sql = self._q.read_stream.format(order="DESC" if desc else "ASC")
        return await self.pool.fetch(
            sql,
            stream_id,
            after_version if after_version is not None else -(2**63),
            upto_version if upto_version is not None else 2**63 - 1,
            limit,
            record_class=RecordedEvent,
        )

    async def command_result(
        self, command_id: UUID, *, command_digest: bytes | None = None
    ) -> AppendResult | None:
        """The result of a command already recorded, or None if it never appended.

        Raises CommandReusedError if `command_digest` is given and the recorded command
        asked for something else."""
        rows = await self.pool.fetch(self._q.command_events, command_id)
        if not rows:
            return None
        written = [_Written(*row) for row in rows]
        if _reused(written, command_digest):
            raise CommandReusedError(command_id)
        return _result_from_rows(written)

    async def subscribe_batches(
        self,
        after: int = 0,
        *,
        batch_size: int = 1000,
        topics: Sequence[str] = (),
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Catches up from `after`, then follows live appends, a batch at a time.

        Woken by this process's writer at once, by other processes' NOTIFY, and by a
        poll every `poll_interval` seconds whatever happens to notifications."""
        waiter = await self.wakeups.register()
        try:
            while True:
                waiter.clear()
                batch = await self.read_all(after, batch_size, topics=topics)
                if batch:
                    after = batch[-1].position
                    yield batch
                    if len(batch) == batch_size:
                        continue
                if not topics or not batch:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow
                    # a cancellation that lands as the wait ends, leaving the task running.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.poll_interval):
                            await waiter.wait()
        finally:
            self.wakeups.unregister(waiter)

    async def subscribe(
        self, after: int = 0, *, batch_size: int = 1000, topics: Sequence[str] = ()
    ) -> AsyncIterator[RecordedEvent]:
        """Like `subscribe_batches`, one event at a time."""
        async for batch in self.subscribe_batches(after, batch_size=batch_size, topics=topics):
            for event in batch:
                yield event


def _check_consecutive(events: Sequence[StoredEvent], expected_version: int | _Unset) -> None:
    last: dict[UUID, int] = {}
    for event in events:
        if not isinstance(event.originator_id, UUID):
            raise InvalidAppendError(f"originator_id {event.originator_id!r} is not a UUID")
        previous = last.get(event.originator_id)
        if previous is not None and event.originator_version != previous + 1:
            raise InvalidAppendError(
                f"stream {event.originator_id}: version {event.originator_version} "
                f"does not follow version {previous}"
            )
        last[event.originator_id] = event.originator_version
    if not isinstance(expected_version, _Unset):
        if len(last) != 1:
            raise InvalidAppendError("expected_version applies to a single-stream append")
        first = events[0]
        if first.originator_version != expected_version + 1:
            raise InvalidAppendError(
                f"expected version {expected_version}, so the first event must have "
                f"version {expected_version + 1}, not {first.originator_version}"
            )


def _conflict(
    pending: _PendingAppend, heads: dict[int, tuple[int, bytes]]
) -> ConcurrencyError | None:
    """The conflict that refuses `pending`, if any, given each stream's head (keyed by
    the stream id's integer)."""
    seen: set[int] = set()
    for event in pending.events:
        key = event.originator_id.int
        if key in seen:
            continue
        seen.add(key)
        current = heads.get(key)
        current_version = current[0] if current else None
        if not isinstance(pending.expected_version, _Unset):
            if (current_version or 0) != pending.expected_version:
                return ConcurrencyError(
                    event.originator_id, pending.expected_version, current_version
                )
        elif current_version is not None and event.originator_version != current_version + 1:
            return ConcurrencyError(
                event.originator_id, event.originator_version - 1, current_version
            )
    return None


class _Plan(NamedTuple):
    """What a group of appends will write, decided against what the check read."""

    outcomes: list[AppendResult | Exception]
    columns: tuple[list[Any], ...]
    head_position: int
    last_position: int
    recorded_at: datetime


def _plan(batch: list[_PendingAppend], rows: Sequence[asyncpg.Record]) -> _Plan:
    """Decides each append of the group: an earlier command's result, a conflict, or new
    events at the next positions, chained onto each stream's hash."""
    (head,) = (r for r in rows if r[0] == 0)
    head_position = position = head[2]
    recorded_at = head[3]
    recorded_micros = to_micros(recorded_at)
    # Streams by their id's integer: the writer looks each up for every event it
    # writes, and a uuid.UUID hashes in Python, its integer in C.
    heads: dict[int, tuple[int, bytes]] = {}
    earlier: dict[UUID, list[_Written]] = {}
    for kind, stream_id, version, at, hash_or_digest, command_id, written_position in rows:
        if kind == 1:
            heads[stream_id.int] = (version, hash_or_digest or GENESIS)
        elif kind == 2:
            earlier.setdefault(command_id, []).append(
                _Written(written_position, stream_id, version, at, hash_or_digest)
            )
    for written in earlier.values():
        written.sort()

    # One per new event: the columns `insert` takes as arrays, in its order.
    written_rows: list[tuple[Any, ...]] = []
    outcomes: list[AppendResult | Exception] = []
    in_batch: dict[UUID, tuple[AppendResult, bytes | None]] = {}
    no_stream = (0, GENESIS)
    for pending in batch:
        meta = pending.metadata
        command_id = meta.command_id
        if command_id in earlier:
            if _reused(earlier[command_id], meta.command_digest):
                outcomes.append(CommandReusedError(command_id))
            else:
                outcomes.append(_result_from_rows(earlier[command_id]))
            continue
        if command_id in in_batch:
            first, first_digest = in_batch[command_id]
            if _differ(first_digest, meta.command_digest):
                outcomes.append(CommandReusedError(command_id))
            else:
                outcomes.append(_as_duplicate(first))
            continue
        conflict = _conflict(pending, heads)
        if conflict is not None:
            outcomes.append(conflict)
            continue
        command = command_part(command_id, meta.actor, meta.trace_id)
        first_position = position + 1
        stream_heads: dict[int, StreamHead] = {}
        for event in pending.events:
            position += 1
            stream_id, version = event.originator_id, event.originator_version
            key = stream_id.int
            digest = chain(
                heads.get(key, no_stream)[1],
                stream_id,
                version,
                position,
                recorded_micros,
                command,
                event.topic,
                event.state,
            )
            heads[key] = (version, digest)
            stream_heads[key] = StreamHead(stream_id, version)
            written_rows.append(
                (
                    stream_id,
                    version,
                    event.topic,
                    event.state,
                    command_id,
                    meta.actor,
                    meta.trace_id,
                    digest,
                    meta.command_digest,
                )
            )
        result = AppendResult(
            positions=tuple(range(first_position, position + 1)),
            streams=tuple(stream_heads.values()),
            recorded_at=recorded_at,
        )
        if command_id is not None:
            in_batch[command_id] = (result, meta.command_digest)
        outcomes.append(result)
    columns = (
        tuple(list(column) for column in zip(*written_rows, strict=True))
        if written_rows
        else tuple([] for _ in range(_ARRAYS))
    )
    return _Plan(outcomes, columns, head_position, position, recorded_at)


class _Written(NamedTuple):
    """An event a command already wrote, and the digest of what the command asked."""

    position: int
    stream_id: UUID
    version: int
    recorded_at: datetime
    command_digest: bytes | None


def _differ(recorded: bytes | None, asked: bytes | None) -> bool:
    """Whether two digests show two different commands. A missing digest (an event
    written before digests were kept, or a caller that sends none) matches any."""
    return recorded is not None and asked is not None and recorded != asked


def _reused(written: Sequence[_Written], asked: bytes | None) -> bool:
    return _differ(written[0].command_digest, asked)


def _result_from_rows(rows: Sequence[_Written]) -> AppendResult:
    heads: dict[UUID, int] = {}
    for row in rows:
        heads[row.stream_id] = max(heads.get(row.stream_id, row.version), row.version)
    return AppendResult(
        positions=tuple(row.position for row in rows),
        streams=tuple(StreamHead(s, v) for s, v in heads.items()),
        recorded_at=rows[0].recorded_at,
        duplicate=True,
    )


def _as_duplicate(result: AppendResult) -> AppendResult:
    return AppendResult(result.positions, result.streams, result.recorded_at, duplicate=True)


def _settle(pending: _PendingAppend, outcome: AppendResult | Exception) -> None:
    if pending.future.done():
        return
    if isinstance(outcome, Exception):
        pending.future.set_exception(outcome)
    else:
        pending.future.set_result(outcome)


def _translate(error: asyncpg.PostgresError) -> Exception:
    if isinstance(error, asyncpg.UniqueViolationError):
        return InvalidAppendError(f"append conflicts with stored events: {error}")
    return EventStoreError(f"append failed: {error}")
