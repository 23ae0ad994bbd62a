"""Projection positions, committed in the same transaction as the projection's view, so
each upstream event is applied exactly once; `wait` gives read-your-writes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg

from libs.eventstore.errors import EventStoreError, ProjectionLagError
from libs.eventstore.recorder import quote_schema


class TrackingConflictError(EventStoreError):
    """The projection has already applied this upstream position (or a later one)."""


class TrackingStore:
    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self.pool = pool
        s = quote_schema(schema)
        self._select = (
            f"SELECT position FROM {s}.projection_tracking WHERE projection = $1 AND upstream = $2"
        )
        self._select_all = (
            f"SELECT upstream, position FROM {s}.projection_tracking WHERE projection = $1"
        )
        self._upsert = (
            f"INSERT INTO {s}.projection_tracking AS t (projection, upstream, position) "
            f"VALUES ($1, $2, $3) ON CONFLICT (projection, upstream) DO UPDATE "
            f"SET position = excluded.position, updated_at = clock_timestamp() "
            f"WHERE t.position < excluded.position RETURNING position"
        )
        # Only from exactly `after` ($4): a runner that read events after position 5 may
        # record 9 only if the view is still at 5. Advancing alone is not enough when two
        # runners follow one projection (two replicas of a service): one applies 6..7
        # while the other applies 6..9, and 6 and 7 would be applied twice.
        self._first = (
            f"INSERT INTO {s}.projection_tracking AS t (projection, upstream, position) "
            f"VALUES ($1, $2, $3) ON CONFLICT (projection, upstream) DO UPDATE "
            f"SET position = excluded.position, updated_at = clock_timestamp() "
            f"WHERE t.position = 0 RETURNING position"
        )
        self._advance_from = (
            f"UPDATE {s}.projection_tracking SET position = $3, updated_at = clock_timestamp() "
            f"WHERE projection = $1 AND upstream = $2 AND position = $4 RETURNING position"
        )
        self._delete = f"DELETE FROM {s}.projection_tracking WHERE projection = $1"
        self._advanced = asyncio.Condition()
        self._wanted: dict[str, asyncio.Event] = {}

    async def position(
        self, projection: str, upstream: str, *, conn: asyncpg.Connection | None = None
    ) -> int | None:
        """The last upstream position applied; read on `conn` to see it in that
        connection's transaction."""
        return await (conn or self.pool).fetchval(self._select, projection, upstream)

    async def positions(self, projection: str) -> dict[str, int]:
        rows = await self.pool.fetch(self._select_all, projection)
        return {row["upstream"]: row["position"] for row in rows}

    async def record(
        self,
        conn: asyncpg.Connection,
        projection: str,
        upstream: str,
        position: int,
        *,
        after: int | None = None,
    ) -> None:
        """Moves the projection to `position` inside the caller's transaction; with
        `after`, only from exactly that position (0: never recorded).

        Raises TrackingConflictError if it is already at or beyond `position`, or not at
        `after`: the caller's transaction must then roll back, so nothing is applied
        twice."""
        if after is None:
            recorded = await conn.fetchval(self._upsert, projection, upstream, position)
        elif after == 0:
            recorded = await conn.fetchval(self._first, projection, upstream, position)
        else:
            recorded = await conn.fetchval(
                self._advance_from, projection, upstream, position, after
            )
        if recorded is None and after is None:
            raise TrackingConflictError(
                f"projection {projection!r} has already applied {upstream!r} "
                f"up to or beyond position {position}"
            )
        if recorded is None:
            raise TrackingConflictError(
                f"projection {projection!r} is no longer at {upstream!r} position {after}, "
                f"so it cannot move from there to {position}: another runner moved it"
            )

    @contextlib.asynccontextmanager
    async def transaction(
        self, projection: str, upstream: str, position: int, *, after: int | None = None
    ) -> AsyncIterator[asyncpg.Connection]:
        """A transaction in which the caller updates its view; the new position commits
        with it, or neither does. See `record` for `after`."""
        async with self.pool.acquire() as conn, conn.transaction():
            await self.record(conn, projection, upstream, position, after=after)
            yield conn
        async with self._advanced:
            self._advanced.notify_all()

    async def reset(self, conn: asyncpg.Connection, projection: str) -> None:
        """Forgets a projection's positions, inside the caller's transaction (for a rebuild
        that also clears the view)."""
        await conn.execute(self._delete, projection)

    def wanted(self, projection: str) -> asyncio.Event:
        """Set while someone in this process waits for `projection` to advance."""
        return self._wanted.setdefault(projection, asyncio.Event())

    async def wait(
        self, projection: str, upstream: str, position: int, *, timeout: float = 5.0
    ) -> None:
        """Returns once the projection has applied `upstream` up to `position`.

        Raises ProjectionLagError (a TimeoutError) after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        interval = 0.005
        while True:
            current = await self.position(projection, upstream)
            if current is not None and current >= position:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProjectionLagError(projection, upstream, current or 0, position, timeout)
            # Someone is waiting: a runner in this process pausing between batches
            # (see ProjectionRunner's batch_interval) applies the next batch now.
            self.wanted(projection).set()
            # Woken at once by a commit in this process; polls for other processes.
            async with self._advanced:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(interval, remaining)):
                        await self._advanced.wait()
            interval = min(interval * 2, 0.2)
