"""Runs a projection over a store's events: each batch is applied and its position
recorded in one transaction. An error stops the projection where it is; it never moves
past an event it did not apply."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import asyncpg

from libs.eventstore.recorder import EventStore
from libs.eventstore.records import RecordedEvent
from libs.eventstore.tracking import TrackingStore

log = logging.getLogger(__name__)


class Projection(Protocol):
    """A read model kept from events. `name` identifies it in the tracking table."""

    name: str

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        """Updates the view for `events`, inside the caller's transaction."""

    async def clear(self, conn: asyncpg.Connection) -> None:
        """Empties the view, inside the caller's transaction (for a rebuild)."""


class ProjectionRunner:
    def __init__(
        self,
        projection: Projection,
        source: EventStore,
        tracking: TrackingStore,
        *,
        upstream: str | None = None,
        batch_size: int = 1000,
        batch_interval: float = 0.0,
    ) -> None:
        self.projection = projection
        self.source = source
        self.tracking = tracking
        self.upstream = upstream or source.schema
        self.batch_size = batch_size
        self.batch_interval = batch_interval

    async def position(self) -> int:
        return await self.tracking.position(self.projection.name, self.upstream) or 0

    async def _apply(self, batch: Sequence[RecordedEvent]) -> None:
        async with self.tracking.transaction(
            self.projection.name, self.upstream, batch[-1].position
        ) as conn:
            await self.projection.apply(conn, batch)

    async def run(self) -> None:
        """Catches up, then follows the source until cancelled.

        With a `batch_interval`, batches start at least that many seconds apart: an
        event after a quiet spell is applied at once, but under steady writes events
        gather into fewer, larger batches (each batch is a transaction and several
        round trips), at the cost of up to that much more lag."""
        loop = asyncio.get_running_loop()
        after = await self.position()
        async for batch in self.source.subscribe_batches(after, batch_size=self.batch_size):
            started = loop.time()
            await self._apply(batch)
            if self.batch_interval:
                await asyncio.sleep(max(0.0, started + self.batch_interval - loop.time()))

    async def catch_up(
        self, *, upto: int | None = None, progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Applies everything up to `upto` (default: the store's head now) and returns the
        position reached. `progress(position, target)` is called after every batch."""
        target = upto if upto is not None else await self.source.head_position()
        after = await self.position()
        while after < target:
            batch = await self.source.read_all(after, self.batch_size, upto=target)
            if not batch:
                break
            await self._apply(batch)
            after = batch[-1].position
            if progress:
                progress(after, target)
        return after

    async def rebuild(self, *, progress: Callable[[int, int], None] | None = None) -> int:
        """Clears the view and its positions, then replays every event into it."""
        async with self.tracking.pool.acquire() as conn, conn.transaction():
            await self.projection.clear(conn)
            await self.tracking.reset(conn, self.projection.name)
        return await self.catch_up(progress=progress)
