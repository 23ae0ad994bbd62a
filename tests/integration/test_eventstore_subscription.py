"""Reading and following: a tailing subscriber must see every committed event exactly
once, in order, whatever the writers do: race, fail, roll back, or hold a transaction open."""

from __future__ import annotations

import asyncio
import random
from uuid import uuid4

import pytest
from eventsourcing.persistence import StoredEvent

from libs.eventstore import ConcurrencyError, EventStore


async def _tail(store: EventStore, seen: list, progressed: asyncio.Event):
    async for batch in store.subscribe_batches(0, batch_size=200):
        seen.extend(batch)
        progressed.set()


async def _caught_up(seen: list, head: int, progressed: asyncio.Event) -> None:
    while True:
        progressed.clear()
        if seen and seen[-1].position >= head:
            return
        await progressed.wait()


@pytest.mark.parametrize("run", range(3))
async def test_a_tailing_subscriber_sees_each_event_once_despite_races_rollbacks_and_open_txns(
    pool, schema, run, optimistic_attempts
):
    # Two stores on one schema stand for two processes, each with its own writer task.
    process_a = EventStore(
        pool, schema, poll_interval=0.05, optimistic_attempts=optimistic_attempts
    )
    process_b = EventStore(
        pool, schema, poll_interval=0.05, optimistic_attempts=optimistic_attempts
    )
    reader = EventStore(pool, schema, poll_interval=0.05)
    acknowledged: set[tuple] = set()
    rng = random.Random(run)
    seen: list = []
    progressed = asyncio.Event()
    tail = asyncio.create_task(_tail(reader, seen, progressed))

    async def writer(store: EventStore, n: int) -> None:
        streams = [uuid4() for _ in range(3)]
        versions = dict.fromkeys(streams, 0)
        for _ in range(n):
            stream = rng.choice(streams)
            if rng.random() < 0.05:
                # A poisoned append: its transaction rolls back.
                bad = StoredEvent(stream, versions[stream] + 1, "x\x00", b"")
                with pytest.raises(Exception):  # noqa: B017
                    await store.append([bad])
                continue
            if versions[stream] and rng.random() < 0.05:
                # A stale append: refused without writing.
                with pytest.raises(ConcurrencyError):
                    await store.append([StoredEvent(stream, 1, "t", b"")])
                continue
            count = rng.randint(1, 3)
            batch = [
                StoredEvent(stream, versions[stream] + i, "t", b"{}") for i in range(1, count + 1)
            ]
            await store.append(batch)
            versions[stream] += count
            acknowledged.update((e.originator_id, e.originator_version) for e in batch)

    async def foreign_rollbacks() -> None:
        # Another process takes the head lock, writes, sits on it, then rolls back.
        for _ in range(5):
            async with pool.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                head = await conn.fetchval(
                    f'SELECT last_position FROM "{schema}".stored_events_head FOR UPDATE'
                )
                await conn.execute(
                    f'INSERT INTO "{schema}".stored_events (notification_id, originator_id, '
                    f"originator_version, topic, state) VALUES ($1, $2, 1, 'ghost', '')",
                    head + 1,
                    uuid4(),
                )
                await asyncio.sleep(0.02)  # holds the head lock while our writers queue
                await tx.rollback()

    async def long_open_transaction(stop: asyncio.Event) -> None:
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            await conn.fetchval(f'SELECT count(*) FROM "{schema}".stored_events')
            await stop.wait()

    stop_long = asyncio.Event()
    long_tx = asyncio.create_task(long_open_transaction(stop_long))
    writers = [writer(process_a, 60) for _ in range(4)] + [writer(process_b, 60) for _ in range(4)]
    try:
        await asyncio.gather(*writers, foreign_rollbacks())
        stop_long.set()
        await long_tx
        await asyncio.wait_for(_caught_up(seen, await reader.head_position(), progressed), 20)
    finally:
        stop_long.set()
        tail.cancel()
        for s in (process_a, process_b, reader):
            await s.close()

    positions = [e.position for e in seen]
    head = await reader.head_position()
    assert positions == list(range(1, head + 1)), "skipped or duplicated positions"
    assert {(e.originator_id, e.originator_version) for e in seen} == acknowledged
    assert not any(e.topic == "ghost" for e in seen)


async def test_subscribe_catches_up_then_follows_live_appends(store):
    for i in range(5):
        await store.append([StoredEvent(uuid4(), 1, "t", str(i).encode())])
    received = []

    async def follow():
        async for event in store.subscribe(after=2):
            received.append(event.position)
            if len(received) == 5:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0)
    await store.append([StoredEvent(uuid4(), 1, "t", b"live1")])
    await store.append([StoredEvent(uuid4(), 1, "t", b"live2")])
    await asyncio.wait_for(task, 5)
    assert received == [3, 4, 5, 6, 7]


async def test_another_process_append_wakes_a_subscriber_through_notify(pool, schema):
    writer = EventStore(pool, schema)
    # A poll interval far longer than the waits below: only NOTIFY can wake it in time.
    reader = EventStore(pool, schema, poll_interval=60)
    received: list[int] = []
    arrived = asyncio.Event()

    async def follow():
        async for event in reader.subscribe():
            received.append(event.position)
            arrived.set()

    task = asyncio.create_task(follow())
    try:
        await writer.append([StoredEvent(uuid4(), 1, "t", b"first")])
        await asyncio.wait_for(arrived.wait(), 5)  # the reader is listening and caught up
        arrived.clear()
        await writer.append([StoredEvent(uuid4(), 1, "t", b"second")])
        await asyncio.wait_for(arrived.wait(), 5)
    finally:
        task.cancel()
        await writer.close()
        await reader.close()
    assert received == [1, 2]
    assert reader.wakeups.notifications_received >= 1


async def test_a_lost_listen_connection_is_replaced_and_nothing_is_missed(pool, schema):
    writer = EventStore(pool, schema)
    reader = EventStore(pool, schema, poll_interval=60)  # only NOTIFY wakes it in time
    received: list[bytes] = []
    arrived = asyncio.Event()

    async def follow():
        async for event in reader.subscribe():
            received.append(event.state)
            arrived.set()

    task = asyncio.create_task(follow())
    try:
        await writer.append([StoredEvent(uuid4(), 1, "t", b"first")])
        await asyncio.wait_for(arrived.wait(), 5)
        arrived.clear()
        # PostgreSQL ends the reader's LISTEN session, as a restart or failover would.
        listener_pid = reader.wakeups._listener.get_server_pid()
        assert await pool.fetchval("SELECT pg_terminate_backend($1)", listener_pid)
        # Committed while the reader may not be listening: it must still arrive.
        await writer.append([StoredEvent(uuid4(), 1, "t", b"while deaf")])
        await asyncio.wait_for(arrived.wait(), 5)
        arrived.clear()
        await writer.append([StoredEvent(uuid4(), 1, "t", b"after")])
        await asyncio.wait_for(arrived.wait(), 5)
    finally:
        task.cancel()
        await writer.close()
        await reader.close()
    assert received == [b"first", b"while deaf", b"after"]
    assert reader.wakeups.listens == 2
    assert reader.wakeups._listener is None or not reader.wakeups._listener.is_closed()


async def test_a_burst_of_appends_sends_few_notifications_and_the_last_one_arrives(pool, schema):
    # 40 appends within a few ms: with a 200 ms notify interval, at most two NOTIFYs
    # (the first at once, one more for the rest), yet the reader still sees every event
    # promptly through NOTIFY alone.
    writer = EventStore(pool, schema, notify_interval=0.2)
    reader = EventStore(pool, schema, poll_interval=60)
    received: list[int] = []
    listening = asyncio.Event()

    async def follow():
        async for event in reader.subscribe():
            received.append(event.position)
            listening.set()
            if event.position == 41:
                return

    task = asyncio.create_task(follow())
    try:
        await writer.append([StoredEvent(uuid4(), 1, "t", b"first")])
        await asyncio.wait_for(listening.wait(), 5)  # the reader is listening and caught up
        before = reader.wakeups.notifications_received
        await asyncio.gather(
            *(writer.append([StoredEvent(uuid4(), 1, "t", b"")]) for _ in range(40))
        )
        await asyncio.wait_for(task, 5)
    finally:
        task.cancel()
        await writer.close()
        await reader.close()
    assert received == list(range(1, 42))
    assert 1 <= reader.wakeups.notifications_received - before <= 2


async def test_read_all_filters_by_topic_and_bounds(store):
    for topic in ["a", "b", "a", "c"]:
        await store.append([StoredEvent(uuid4(), 1, topic, b"")])
    assert [e.position for e in await store.read_all(topics=["a"])] == [1, 3]
    assert [e.position for e in await store.read_all(1, upto=3)] == [2, 3]
    assert [e.position for e in await store.read_all(0, 2)] == [1, 2]
