"""A synchronous face on the async event store, so the eventsourcing library's own recorder
test cases (which call recorders from threads) can run against it unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg
from eventsourcing.persistence import (
    ApplicationRecorder,
    IntegrityError,
    Notification,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)

from libs.eventstore import EventStore, TrackingConflictError, TrackingStore, create_schema


class LoopThread:
    """An event loop running in a daemon thread; `run` submits a coroutine and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float | None = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class SyncStore(ApplicationRecorder, TrackingRecorder):
    """ApplicationRecorder and TrackingRecorder over one EventStore schema."""

    PROJECTION = "conformance"

    def __init__(self, dsn: str, schema: str) -> None:
        self.runner = LoopThread()
        self.schema = schema

        async def open_store() -> tuple[asyncpg.Pool, EventStore, TrackingStore]:
            pool = await asyncpg.create_pool(dsn, min_size=2, max_size=12)
            async with pool.acquire() as conn:
                await create_schema(conn, schema)
            return pool, EventStore(pool, schema, poll_interval=0.1), TrackingStore(pool, schema)

        self.pool, self.store, self.tracking = self.runner.run(open_store())

    def close(self) -> None:
        async def close() -> None:
            await self.store.close()
            await self.pool.close()

        with contextlib.suppress(Exception):
            self.runner.run(close(), timeout=10)
        self.runner.stop()

    # AggregateRecorder / ApplicationRecorder
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> list[int]:
        if not stored_events:
            return None  # type: ignore[return-value]
        result = self.runner.run(self.store.append(list(stored_events)))
        return list(result.positions)

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        events = self.runner.run(
            self.store.read_stream(
                originator_id, after_version=gt, upto_version=lte, desc=desc, limit=limit
            )
        )
        return [
            StoredEvent(e.originator_id, e.originator_version, e.topic, e.state) for e in events
        ]

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> list[Notification]:
        after = 0 if start is None else (start - 1 if inclusive_of_start else start)
        events = self.runner.run(self.store.read_all(after, limit, upto=stop, topics=topics))
        return [
            Notification(
                id=e.position,
                originator_id=e.originator_id,
                originator_version=e.originator_version,
                topic=e.topic,
                state=e.state,
            )
            for e in events
        ]

    def max_notification_id(self) -> int | None:
        return self.runner.run(self.store.head_position()) or None

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Subscription:
        return SyncSubscription(self, gt=gt, topics=topics)

    # TrackingRecorder
    def insert_tracking(self, tracking: Tracking) -> None:
        async def insert() -> None:
            async with self.pool.acquire() as conn, conn.transaction():
                await self.tracking.record(
                    conn, self.PROJECTION, tracking.application_name, tracking.notification_id
                )

        try:
            self.runner.run(insert())
        except TrackingConflictError as error:
            raise IntegrityError(str(error)) from error

    def max_tracking_id(self, application_name: str) -> int | None:
        return self.runner.run(self.tracking.position(self.PROJECTION, application_name))


class SyncSubscription(Subscription[SyncStore]):
    """Iterates the store's async subscription from a synchronous caller."""

    def __init__(self, recorder: SyncStore, gt: int | None, topics: Sequence[str]) -> None:
        super().__init__(recorder, gt=gt, topics=topics)
        self._agen = recorder.store.subscribe(gt or 0, topics=topics)
        self._pending: asyncio.Future[Any] | None = None

    def stop(self) -> None:
        super().stop()
        if self._pending is not None:
            self._recorder.runner.loop.call_soon_threadsafe(self._pending.cancel)

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        super().__exit__(*args, **kwargs)
        with contextlib.suppress(Exception):
            self._recorder.runner.run(self._agen.aclose(), timeout=5)

    def __next__(self) -> Notification:
        if self._has_been_stopped:
            raise StopIteration
        self._pending = asyncio.run_coroutine_threadsafe(
            self._agen.__anext__(), self._recorder.runner.loop
        )
        try:
            event = self._pending.result()
        except (asyncio.CancelledError, StopAsyncIteration) as stopped:
            raise StopIteration from stopped
        finally:
            self._pending = None
        if self._has_been_stopped:
            raise StopIteration
        return Notification(
            id=event.position,
            originator_id=event.originator_id,
            originator_version=event.originator_version,
            topic=event.topic,
            state=event.state,
        )
