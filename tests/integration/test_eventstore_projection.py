"""Projections: the view and the position commit together, so replays apply each event
exactly once, a failure leaves the position where it was, and a rebuild matches."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import asyncpg
import pytest
from eventsourcing.persistence import StoredEvent

from libs.eventstore import (
    EventStore,
    ProjectionRunner,
    TrackingConflictError,
    TrackingStore,
    verify_projection,
)


class CountByTopic:
    """A tiny view: how many events of each topic."""

    def __init__(self, schema: str, fail_on: str | None = None) -> None:
        self.name = "count_by_topic"
        self.table = f'"{schema}".count_by_topic'
        self.fail_on = fail_on

    async def create(self, pool) -> None:
        await pool.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (topic text PRIMARY KEY, n int NOT NULL)"
        )

    async def apply(self, conn, events) -> None:
        for event in events:
            if event.topic == self.fail_on:
                raise RuntimeError(f"cannot apply {event.topic}")
            await conn.execute(
                f"INSERT INTO {self.table} VALUES ($1, 1) "
                f"ON CONFLICT (topic) DO UPDATE SET n = {self.table}.n + 1",
                event.topic,
            )

    async def clear(self, conn) -> None:
        await conn.execute(f"DELETE FROM {self.table}")

    async def counts(self, pool) -> dict[str, int]:
        return dict(await pool.fetch(f"SELECT topic, n FROM {self.table}"))


async def _append_topics(store, topics):
    for topic in topics:
        await store.append([StoredEvent(uuid4(), 1, topic, b"")])


async def test_catch_up_applies_each_event_once_and_records_the_position(store, pool, schema):
    view = CountByTopic(schema)
    await view.create(pool)
    tracking = TrackingStore(pool, schema)
    runner = ProjectionRunner(view, store, tracking, batch_size=2)
    await _append_topics(store, ["a", "b", "a"])
    progress = []
    assert await runner.catch_up(progress=lambda done, total: progress.append((done, total))) == 3
    assert progress == [(2, 3), (3, 3)]
    assert await runner.catch_up() == 3  # nothing new: applies nothing twice
    assert await view.counts(pool) == {"a": 2, "b": 1}
    assert await tracking.position("count_by_topic", schema) == 3


async def test_a_failing_projection_stops_without_moving_past_the_event(store, pool, schema):
    view = CountByTopic(schema, fail_on="poison")
    await view.create(pool)
    tracking = TrackingStore(pool, schema)
    runner = ProjectionRunner(view, store, tracking, batch_size=1)
    await _append_topics(store, ["a", "poison", "b"])
    with pytest.raises(RuntimeError, match="poison"):
        await runner.catch_up()
    assert await runner.position() == 1
    assert await view.counts(pool) == {"a": 1}


async def test_recording_a_position_already_applied_is_refused(pool, schema):
    tracking = TrackingStore(pool, schema)
    async with tracking.transaction("p", "up", 5):
        pass
    with pytest.raises(TrackingConflictError):
        async with tracking.transaction("p", "up", 5):
            pass
    with pytest.raises(TrackingConflictError):
        async with tracking.transaction("p", "up", 4):
            pass
    assert await tracking.positions("p") == {"up": 5}


async def test_recording_from_a_position_needs_the_view_to_be_exactly_there(pool, schema):
    tracking = TrackingStore(pool, schema)
    with pytest.raises(TrackingConflictError):  # never recorded, so not at 3
        async with tracking.transaction("p", "up", 5, after=3):
            pass
    async with tracking.transaction("p", "up", 3, after=0):
        pass
    with pytest.raises(TrackingConflictError):  # already past 0
        async with tracking.transaction("p", "up", 5, after=0):
            pass
    with pytest.raises(TrackingConflictError):  # at 3, not 2, although 6 is ahead
        async with tracking.transaction("p", "up", 6, after=2):
            pass
    async with tracking.transaction("p", "up", 6, after=3):
        pass
    assert await tracking.positions("p") == {"up": 6}


async def test_wait_returns_once_the_projection_reaches_the_position(store, pool, schema):
    view = CountByTopic(schema)
    await view.create(pool)
    tracking = TrackingStore(pool, schema)
    runner = ProjectionRunner(view, store, tracking)
    follower = asyncio.create_task(runner.run())
    try:
        result = await store.append([StoredEvent(uuid4(), 1, "x", b"")])
        await tracking.wait("count_by_topic", schema, result.last_position, timeout=5)
        assert await view.counts(pool) == {"x": 1}
        with pytest.raises(TimeoutError):
            await tracking.wait("count_by_topic", schema, result.last_position + 1, timeout=0.1)
    finally:
        follower.cancel()


class RecordingBatches(CountByTopic):
    def __init__(self, schema: str) -> None:
        super().__init__(schema)
        self.batch_sizes: list[int] = []

    async def apply(self, conn, events) -> None:
        self.batch_sizes.append(len(events))
        await super().apply(conn, events)


@pytest.mark.parametrize("batch_interval", [0.0, 0.1])
async def test_a_batch_interval_gathers_steady_writes_into_fewer_batches(
    store, pool, schema, batch_interval
):
    view = RecordingBatches(schema)
    await view.create(pool)
    tracking = TrackingStore(pool, schema)
    runner = ProjectionRunner(view, store, tracking, batch_interval=batch_interval)
    follower = asyncio.create_task(runner.run())
    try:
        for _ in range(20):  # one event every 10 ms for 200 ms
            result = await store.append([StoredEvent(uuid4(), 1, "x", b"")])
            await asyncio.sleep(0.01)
        await tracking.wait("count_by_topic", schema, result.last_position, timeout=5)
    finally:
        follower.cancel()
    assert await view.counts(pool) == {"x": 20}
    assert sum(view.batch_sizes) == 20
    if batch_interval:
        # The first event after the quiet start is applied alone and at once; the rest
        # arrive while the runner waits out its interval, so they come in a few batches.
        assert view.batch_sizes[0] == 1 and len(view.batch_sizes) <= 8
        assert max(view.batch_sizes) >= 3
    else:
        assert len(view.batch_sizes) >= 10


async def test_a_reader_waiting_for_a_position_cuts_the_batch_interval_short(store, pool, schema):
    view = RecordingBatches(schema)
    await view.create(pool)
    tracking = TrackingStore(pool, schema)
    # Between batches the runner would pause for a minute: far longer than the waits.
    runner = ProjectionRunner(view, store, tracking, batch_interval=60)
    follower = asyncio.create_task(runner.run())
    try:
        for _ in range(3):
            written = await store.append([StoredEvent(uuid4(), 1, "x", b"")])
            await tracking.wait("count_by_topic", schema, written.last_position, timeout=5)
    finally:
        follower.cancel()
    assert view.batch_sizes == [1, 1, 1]
    assert await view.counts(pool) == {"x": 3}


async def test_a_rebuild_from_events_matches_the_live_view(store, pool, schema):
    view = CountByTopic(schema)
    await view.create(pool)
    tracking = TrackingStore(pool, schema)
    runner = ProjectionRunner(view, store, tracking, batch_size=3)
    await _append_topics(store, ["a", "b", "c", "a", "a", "b", "d"])
    await runner.catch_up()
    live = await view.counts(pool)
    assert await runner.rebuild() == 7
    assert await view.counts(pool) == live == {"a": 3, "b": 2, "c": 1, "d": 1}


class FailingAtFirst(CountByTopic):
    """Refuses its first `failures` batches, as a view would while its database is down."""

    def __init__(self, schema: str, failures: int) -> None:
        super().__init__(schema)
        self.failures_left = failures

    async def apply(self, conn, events) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise ConnectionResetError("the database went away")
        await super().apply(conn, events)


async def test_a_running_projection_outlasts_failures_and_applies_each_event_once(
    store, pool, schema
):
    view = FailingAtFirst(schema, failures=3)
    await view.create(pool)
    tracking = TrackingStore(pool, schema)
    runner = ProjectionRunner(view, store, tracking, retry_initial=0.01)
    await _append_topics(store, ["a", "b", "a"])
    follower = asyncio.create_task(runner.run())
    try:
        await tracking.wait("count_by_topic", schema, 3, timeout=5)
        result = await store.append([StoredEvent(uuid4(), 1, "c", b"")])
        await tracking.wait("count_by_topic", schema, result.last_position, timeout=5)
    finally:
        follower.cancel()
    assert runner.failures == 3
    assert isinstance(runner.last_error, ConnectionResetError)
    assert await view.counts(pool) == {"a": 2, "b": 1, "c": 1}


class SignallingFailure(CountByTopic):
    def __init__(self, schema: str) -> None:
        super().__init__(schema)
        self.failed = asyncio.Event()

    async def apply(self, conn, events) -> None:
        try:
            await super().apply(conn, events)
        except asyncpg.PostgresError:
            self.failed.set()
            raise


async def test_a_running_projection_resumes_once_postgresql_accepts_its_writes_again(
    store, pool, schema
):
    view = SignallingFailure(schema)
    await view.create(pool)
    tracking = TrackingStore(pool, schema)
    runner = ProjectionRunner(view, store, tracking, retry_initial=0.01, retry_max=0.05)
    follower = asyncio.create_task(runner.run())
    try:
        first = await store.append([StoredEvent(uuid4(), 1, "a", b"")])
        await tracking.wait("count_by_topic", schema, first.last_position, timeout=5)
        # The view's table disappears: PostgreSQL refuses the next batch, for real.
        await pool.execute(f'ALTER TABLE {view.table} RENAME TO "gone"')
        second = await store.append([StoredEvent(uuid4(), 1, "b", b"")])
        await asyncio.wait_for(view.failed.wait(), timeout=5)
        assert await runner.position() == first.last_position
        await pool.execute(f'ALTER TABLE "{schema}"."gone" RENAME TO count_by_topic')
        await tracking.wait("count_by_topic", schema, second.last_position, timeout=5)
    finally:
        follower.cancel()
    assert runner.failures >= 1
    assert isinstance(runner.last_error, asyncpg.UndefinedTableError)
    assert await view.counts(pool) == {"a": 1, "b": 1}


async def test_two_runners_of_one_projection_apply_each_event_once(pool, schema):
    """Two replicas of a service follow the same projection: batches race, and the
    loser of each race rolls back and resumes from where the winner got to."""
    view = CountByTopic(schema)
    await view.create(pool)
    tracking = TrackingStore(pool, schema)
    stores = [EventStore(pool, schema, poll_interval=0.05) for _ in range(2)]
    runners = [
        ProjectionRunner(view, stores[0], tracking, batch_size=3, retry_initial=0.001),
        ProjectionRunner(view, stores[1], tracking, batch_size=7, retry_initial=0.001),
    ]
    followers = [asyncio.create_task(r.run()) for r in runners]
    try:
        for _burst in range(10):
            written = await asyncio.gather(
                *(
                    stores[n % 2].append([StoredEvent(uuid4(), 1, f"t{n % 3}", b"")])
                    for n in range(20)
                )
            )
        head = max(w.last_position for w in written)
        await tracking.wait("count_by_topic", schema, head, timeout=10)
    finally:
        for follower in followers:
            follower.cancel()
        for each in stores:
            await each.close()
    assert head == 200
    assert sum((await view.counts(pool)).values()) == 200
    assert runners[0].failures == runners[1].failures == 0


class AnotherRunnerGoesFirst:
    """The store as one runner reads it, except that just after its first read (a batch
    read, or the first batch of a subscription) `other` applies those events, up to
    `upto` (default: the head), and records them first."""

    def __init__(self, store: EventStore, other: ProjectionRunner, upto: int | None = None):
        self.store, self.other, self.upto = store, other, upto
        self.schema = store.schema
        self.raced = False

    async def _race(self) -> None:
        if not self.raced:
            self.raced = True
            await self.other.catch_up(upto=self.upto)

    async def head_position(self) -> int:
        return await self.store.head_position()

    async def read_all(self, after, limit, *, upto=None):
        batch = await self.store.read_all(after, limit, upto=upto)
        await self._race()
        return batch

    async def subscribe_batches(self, after, *, batch_size):
        async for batch in self.store.subscribe_batches(after, batch_size=batch_size):
            await self._race()
            yield batch


async def test_a_following_runner_that_loses_a_batch_resumes_where_the_winner_got_to(
    store, pool, schema
):
    view = CountByTopic(schema)
    await view.create(pool)
    tracking = TrackingStore(pool, schema)
    await _append_topics(store, ["a", "b", "c"] * 10)
    source = AnotherRunnerGoesFirst(store, ProjectionRunner(view, store, tracking, batch_size=7))
    follower = ProjectionRunner(view, source, tracking, batch_size=4)  # type: ignore[arg-type]
    task = asyncio.create_task(follower.run())
    try:
        await tracking.wait("count_by_topic", schema, 30, timeout=5)
        await _append_topics(store, ["d"] * 5)
        await tracking.wait("count_by_topic", schema, 35, timeout=5)
    finally:
        task.cancel()
    assert source.raced
    assert follower.failures == 0  # losing a race is not a failure
    assert await view.counts(pool) == {"a": 10, "b": 10, "c": 10, "d": 5}


async def _rebuilt_count_by_topic(conn, scratch: str) -> CountByTopic:
    view = CountByTopic(scratch)
    await view.create(conn)
    return view


async def test_a_live_view_is_proved_against_one_rebuilt_from_its_events(store, pool, schema):
    view = CountByTopic(schema)
    await view.create(pool)
    tracking = TrackingStore(pool, schema)
    runner = ProjectionRunner(view, store, tracking, batch_size=3)
    await _append_topics(store, ["a", "b", "a", "c"] * 5)
    follower = asyncio.create_task(runner.run())
    await tracking.wait("count_by_topic", schema, 20, timeout=5)
    writing = asyncio.create_task(_append_topics(store, ["d", "a"] * 20))
    try:
        steps = []
        check = await verify_projection(
            store,
            tracking,
            "count_by_topic",
            ["count_by_topic"],
            _rebuilt_count_by_topic,
            batch_size=7,
            progress=lambda done, total: steps.append((done, total)),
        )
        await writing
    finally:
        follower.cancel()
    assert check.matches, check
    # Compared where the live view stood in the snapshot, while events went on arriving.
    assert 20 <= check.position <= await store.head_position()
    assert steps[-1] == (check.position, check.position)
    (compared,) = check.tables
    assert compared.live_rows == compared.rebuilt_rows >= 1
    leftover = await pool.fetchval(
        "SELECT count(*) FROM pg_namespace WHERE starts_with(nspname, $1)", f"{schema}_scratch_"
    )
    assert leftover == 0


async def test_a_view_changed_behind_its_projection_is_shown_to_differ(store, pool, schema):
    view = CountByTopic(schema)
    await view.create(pool)
    tracking = TrackingStore(pool, schema)
    await _append_topics(store, ["a", "b", "a"])
    await ProjectionRunner(view, store, tracking).catch_up()
    await pool.execute(f"UPDATE {view.table} SET n = 99 WHERE topic = 'a'")
    check = await verify_projection(
        store, tracking, "count_by_topic", ["count_by_topic"], _rebuilt_count_by_topic
    )
    assert not check.matches and check.position == 3
    (compared,) = check.tables
    assert (compared.only_live, compared.only_rebuilt) == (1, 1)
    assert compared.only_live_examples == ("(a,99)",)
    assert compared.only_rebuilt_examples == ("(a,2)",)


async def test_a_rebuild_carries_on_where_another_runner_got_to(store, pool, schema):
    view = CountByTopic(schema)
    await view.create(pool)
    tracking = TrackingStore(pool, schema)
    await _append_topics(store, ["a", "b"] * 30)
    live = ProjectionRunner(view, store, tracking, batch_size=4)
    await live.catch_up()
    await pool.execute(f"UPDATE {view.table} SET n = 0")  # a view gone wrong
    source = AnotherRunnerGoesFirst(store, live, upto=30)
    rebuilding = ProjectionRunner(view, source, tracking, batch_size=3)  # type: ignore[arg-type]
    steps = []
    assert await rebuilding.rebuild(progress=lambda done, total: steps.append(done)) == 60
    assert source.raced and steps[0] == 33  # its first batch was the other's: went on from 30
    assert await view.counts(pool) == {"a": 30, "b": 30}
