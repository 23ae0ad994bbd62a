"""Who consulted which records, and when: an access log kept beside a service's events.

Law-enforcement processing must log each consultation and disclosure of personal data
with its date and time and who made it (Data Protection Act 2018, section 62), and a
serious case review asks the same of a record: who looked at it, and when, and what they
were shown. A service records each answer that shows people's details, or says that no
one matched, before the answer goes out: entries that arrive while a write is under way
are written together in one statement, and each caller waits until its entry is stored.
If it cannot be stored, the call fails and nothing is shown.

The log is kept in monthly partitions, made as each month's first entry is written, so
that a retention period is kept by dropping whole months (`retire_before`): single
entries are never deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

import asyncpg

from libs.eventstore.context import current_actor, current_trace_id
from libs.eventstore.errors import EventStoreError
from libs.eventstore.recorder import quote_schema

UNKNOWN_ACTOR = "unknown"

# One partition a month (UTC), made when the month's first entry is written, so that a
# retention period is kept by dropping whole months (`AccessLog.retire_before`).
_TABLE = """
CREATE TABLE IF NOT EXISTS {s}.access_log (
    id bigserial NOT NULL,
    at timestamptz NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    asked jsonb NOT NULL,
    disclosed uuid[] NOT NULL,
    trace_id text,
    PRIMARY KEY (at, id)
) PARTITION BY RANGE (at);
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS access_log_disclosed_idx ON {s}.access_log USING gin (disclosed);
CREATE INDEX IF NOT EXISTS access_log_actor_idx ON {s}.access_log (actor, at);
CREATE INDEX IF NOT EXISTS access_log_asked_idx
    ON {s}.access_log USING gin (asked jsonb_path_ops);
"""


async def create_access_log(conn: asyncpg.Connection, schema: str) -> None:
    s = quote_schema(schema)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"access:{schema}")
        await conn.execute(_TABLE.format(s=s))
        kind = await conn.fetchval(
            "SELECT relkind::text FROM pg_class WHERE oid = $1::regclass", f"{s}.access_log"
        )
        if kind != "p":
            # Only development databases of 2026-11-22 have one: the log was kept
            # unpartitioned for part of that day, before any release.
            raise EventStoreError(
                f"{schema}.access_log is not partitioned by month: it predates monthly "
                f"partitions. Rename it aside, start again, and copy its rows across"
            )
        await conn.execute(_INDEXES.format(s=s))


@dataclass(frozen=True)
class Access:
    """One consultation: who (the caller's token subject), what they asked, whose
    details the answer showed (empty when nothing matched), when, and under which trace."""

    at: datetime
    actor: str
    action: str
    asked: dict[str, Any]
    disclosed: tuple[UUID, ...]
    trace_id: str | None


def _json(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _month(at: datetime) -> date:
    utc = at.astimezone(UTC)
    return date(utc.year, utc.month, 1)


def _next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def _partition(month: date) -> str:
    return f"access_log_{month.year:04d}_{month.month:02d}"


class AccessLogClosedError(EventStoreError):
    """The access log stopped before the entry could be stored: nothing is shown."""


class AccessLog:
    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.pool = pool
        self.schema = schema
        self.clock = clock
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._months: set[date] = set()
        self._s = s = quote_schema(schema)
        self._insert = f"""
            INSERT INTO {s}.access_log (at, actor, action, asked, disclosed, trace_id)
            SELECT at, actor, action, asked::jsonb,
                   string_to_array(disclosed, ',')::uuid[], trace_id
            FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[],
                        $6::text[]) AS t(at, actor, action, asked, disclosed, trace_id)
        """
        self._select = f"""
            SELECT at, actor, action, asked::text, disclosed, trace_id FROM {s}.access_log
            WHERE (disclosed @> ARRAY[$1::uuid]
                   OR asked @> jsonb_build_object('person_id', $1::text))
              AND at >= $2 ORDER BY at, id LIMIT $3
        """
        self._select_actor = f"""
            SELECT at, actor, action, asked::text, disclosed, trace_id FROM {s}.access_log
            WHERE actor = $1 AND at >= $2 ORDER BY at, id LIMIT $3
        """
        self._select_identifier = f"""
            SELECT at, actor, action, asked::text, disclosed, trace_id FROM {s}.access_log
            WHERE (asked @> jsonb_build_object('identifier', $1::text)
                   OR asked @> jsonb_build_object('identifiers', jsonb_build_array($1::text)))
              AND at >= $2 ORDER BY at, id LIMIT $3
        """

    async def record(
        self, action: str, asked: Mapping[str, Any], disclosed: Iterable[UUID]
    ) -> None:
        """Stores one consultation by the current actor; returns once it is stored."""
        actor = current_actor.get()
        row = (
            self.clock(),
            actor.subject if actor is not None else UNKNOWN_ACTOR,
            action,
            json.dumps(
                {k: v for k, v in asked.items() if v is not None}, default=_json, sort_keys=True
            ),
            ",".join(str(person_id) for person_id in dict.fromkeys(disclosed)),
            current_trace_id.get(),
        )
        future = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name=f"access-log-{self.schema}")
        await future

    async def _write(self) -> None:
        # Whatever arrives while a statement is under way goes in the next one.
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._partitions_for(row[0] for row, _ in batch)
                columns = zip(*(row for row, _ in batch), strict=True)
                await self.pool.execute(self._insert, *map(list, columns))
            except Exception as error:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
            except BaseException:
                # Cancelled (at shutdown): no caller may go on to show what was not
                # logged, nor wait for ever.
                for _, future in [*batch, *self._pending]:
                    if not future.done():
                        future.set_exception(AccessLogClosedError())
                self._pending = []
                raise
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def _partitions_for(self, times: Iterable[datetime]) -> None:
        """Makes the monthly partitions these entries go in, unless made already."""
        for month in sorted({_month(at) for at in times} - self._months):
            bounds = f"FROM ('{month} 00:00+00') TO ('{_next_month(month)} 00:00+00')"
            # Another process may make it at the same moment: either way, it is there.
            with contextlib.suppress(asyncpg.DuplicateTableError, asyncpg.UniqueViolationError):
                await self.pool.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._s}.{_partition(month)} "
                    f"PARTITION OF {self._s}.access_log FOR VALUES {bounds}"
                )
            self._months.add(month)

    async def months(self) -> list[tuple[date, int]]:
        """Each month the log holds, oldest first, with how many entries."""
        rows = await self.pool.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = $1::regclass ORDER BY c.relname",
            f"{self._s}.access_log",
        )
        found = []
        for (name,) in rows:
            count = await self.pool.fetchval(f"SELECT count(*) FROM {self._s}.{name}")
            found.append((date(int(name[-7:-3]), int(name[-2:]), 1), count))
        return found

    async def retire_before(self, month: date) -> list[tuple[date, int]]:
        """Drops the months before `month` (the first of a month, before the current one)
        and returns them with how many entries each held: a retention period agreed
        with the data protection officer is kept by calling this, never by deleting
        single entries."""
        if month.day != 1:
            raise ValueError("retire whole months: give the first day of a month")
        if month > _month(self.clock()):
            raise ValueError("the current month's entries cannot be retired")
        retired = [(m, count) for m, count in await self.months() if m < month]
        for m, _ in retired:
            await self.pool.execute(f"DROP TABLE {self._s}.{_partition(m)}")
            self._months.discard(m)
        return retired

    async def of_person(
        self, person_id: UUID, *, since: datetime | None = None, limit: int = 1000
    ) -> list[Access]:
        """Consultations that showed the person's details or asked for them by id,
        oldest first."""
        return await self._fetch(self._select, person_id, since, limit)

    async def of_identifier(
        self, identifier: str, *, since: datetime | None = None, limit: int = 1000
    ) -> list[Access]:
        """Consultations that asked for an identifier (written as its service writes it,
        e.g. 'PNC 2012/0394773H'), oldest first."""
        return await self._fetch(self._select_identifier, identifier, since, limit)

    async def by_actor(
        self, actor: str, *, since: datetime | None = None, limit: int = 1000
    ) -> list[Access]:
        """What one caller (a token subject) consulted, oldest first: the question asked
        when someone may have looked at records they had no reason to."""
        return await self._fetch(self._select_actor, actor, since, limit)

    async def _fetch(self, sql: str, key: Any, since: datetime | None, limit: int) -> list[Access]:
        rows = await self.pool.fetch(sql, key, since or datetime.min.replace(tzinfo=UTC), limit)
        return [
            Access(at, actor, action, json.loads(asked), tuple(disclosed), trace_id)
            for at, actor, action, asked, disclosed, trace_id in rows
        ]
