"""Runs a projection over a store's events: each batch is applied and its position
recorded in one transaction, so it never moves past an event it did not apply.

`catch_up` and `rebuild` stop at the first error and raise it; a batch another runner
recorded first is not an error, and they carry on from where it got to. `run`, which
follows the store for as long as the service lives, outlasts errors: it logs each, waits,
and resumes from the recorded position, so a PostgreSQL restart delays the view but never
leaves it behind for good."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import asyncpg

from libs.eventstore.recorder import EventStore
from libs.eventstore.records import RecordedEvent
from libs.eventstore.tracking import TrackingConflictError, TrackingStore

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
        retry_initial: float = 0.05,
        retry_max: float = 5.0,
    ) -> None:
        self.projection = projection
        self.source = source
        self.tracking = tracking
        self.upstream = upstream or source.schema
        self.batch_size = batch_size
        self.batch_interval = batch_interval
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.failures = 0  # errors `run` has outlasted so far
        self.last_error: BaseException | None = None
        self._retry_delay = retry_initial

    async def position(self) -> int:
        return await self.tracking.position(self.projection.name, self.upstream) or 0

    async def _apply(self, after: int, batch: Sequence[RecordedEvent]) -> int:
        """Applies the events that follow position `after`; returns the new position."""
        async with self.tracking.transaction(
            self.projection.name, self.upstream, batch[-1].position, after=after
        ) as conn:
            await self.projection.apply(conn, batch)
        return batch[-1].position

    async def run(self) -> None:
        """Catches up, then follows the source until cancelled.

        With a `batch_interval`, batches start at least that many seconds apart: an
        event after a quiet spell is applied at once, but under steady writes events
        gather into fewer, larger batches (each batch is a transaction and several
        round trips), at the cost of up to that much more lag. Only for readers who
        can wait: whenever someone in this process waits for the view to reach a
        position (`TrackingStore.wait`, read-your-writes), the next batch goes at once.

        An error does not end it. PostgreSQL going away, a batch the projection cannot
        apply yet, or another runner (a second replica) recording the batch first: the
        failed batch's transaction rolls back, the error is logged, and after a pause
        (from `retry_initial` seconds, doubling to `retry_max`, back to the start after a
        batch applies) the runner resumes from the recorded position. An event the
        projection can never apply is retried, and logged, until someone fixes it: the
        view never skips an event."""
        while True:
            try:
                await self._follow()
            except TrackingConflictError as conflict:
                # Another runner applied this batch first; carry on from where it got to.
                log.info("projection %s: %s; resuming", self.projection.name, conflict)
            except Exception as error:  # any failure is retried: the view must not stop
                self.failures += 1
                self.last_error = error
                log.error(
                    "projection %s failed (%d so far), retrying in %.2fs: %r",
                    self.projection.name,
                    self.failures,
                    self._retry_delay,
                    error,
                    # The traceback once per run of failures, not every retry.
                    exc_info=self._retry_delay == self.retry_initial,
                )
                await asyncio.sleep(self._retry_delay)
                self._retry_delay = min(self._retry_delay * 2, self.retry_max)

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        wanted = self.tracking.wanted(self.projection.name)
        after = await self.position()
        async for batch in self.source.subscribe_batches(after, batch_size=self.batch_size):
            started = loop.time()
            after = await self._apply(after, batch)
            self._retry_delay = self.retry_initial
            if self.batch_interval:
                remaining = started + self.batch_interval - loop.time()
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(remaining):
                            await wanted.wait()
                # Cleared before the next read: whoever wants more after this point
                # sets it again, and the batch after next goes at once too.
                wanted.clear()

    async def catch_up(
        self, *, upto: int | None = None, progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Applies everything up to `upto` (default: the store's head now) and returns the
        position reached. `progress(position, target)` is called after every batch.

        Another runner may follow the same projection meanwhile (the live service, while
        an operator rebuilds): whichever records a batch first applies it, and the other
        carries on from the position recorded."""
        target = upto if upto is not None else await self.source.head_position()
        after = await self.position()
        while after < target:
            batch = await self.source.read_all(after, self.batch_size, upto=target)
            if not batch:
                break
            try:
                after = await self._apply(after, batch)
            except TrackingConflictError:
                after = await self.position()
                continue
            if progress:
                progress(after, target)
        return after

    async def rebuild(self, *, progress: Callable[[int, int], None] | None = None) -> int:
        """Clears the view and its positions, then replays every event into it."""
        async with self.tracking.pool.acquire() as conn, conn.transaction():
            await self.projection.clear(conn)
            await self.tracking.reset(conn, self.projection.name)
        return await self.catch_up(progress=progress)
