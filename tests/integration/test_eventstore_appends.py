"""Appending: optimistic concurrency, idempotent retries, atomic multi-stream appends and
the database's clock."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import date
from enum import Enum
from uuid import uuid4

import pytest
from eventsourcing.persistence import StoredEvent

from libs.eventstore import (
    AdaptiveWindow,
    CommandReusedError,
    ConcurrencyError,
    EventStore,
    EventStoreError,
    InvalidAppendError,
    command_digest,
    create_schema,
)
from tests.plans import generic_plan


@dataclass(frozen=True)
class Name:
    given_names: str
    family_name: str


class Kind(Enum):
    PNC = "PNC"
    NOMS = "NOMS"


def holding_told(store: EventStore) -> asyncio.Event:
    """An event set when the store's writer starts holding a group back."""
    holding = asyncio.Event()
    gather = store._gather

    async def gather_and_tell() -> None:
        holding.set()
        await gather()

    store._gather = gather_and_tell
    return holding


def events(stream, versions, topic="t"):
    return [StoredEvent(stream, v, topic, f"v{v}".encode()) for v in versions]


async def test_positions_are_gapless_and_follow_the_order_of_appends(store):
    a, b = uuid4(), uuid4()
    first = await store.append(events(a, [1, 2]))
    second = await store.append(events(b, [1]))
    assert first.positions == (1, 2)
    assert second.positions == (3,)
    assert [e.position for e in await store.read_all()] == [1, 2, 3]
    assert await store.head_position() == 3


async def test_a_stale_version_fails_with_a_typed_error_and_writes_nothing(store):
    stream = uuid4()
    await store.append(events(stream, [1, 2]))
    with pytest.raises(ConcurrencyError) as raised:
        await store.append(events(stream, [2, 3]))
    assert raised.value.stream_id == stream
    assert raised.value.actual_version == 2
    assert [e.originator_version for e in await store.read_stream(stream)] == [1, 2]
    assert await store.head_position() == 2


async def test_an_explicit_expected_version_is_checked(store):
    stream = uuid4()
    await store.append(events(stream, [1]), expected_version=0)
    with pytest.raises(ConcurrencyError) as raised:
        await store.append(events(stream, [1]), expected_version=0)
    assert (raised.value.expected_version, raised.value.actual_version) == (0, 1)
    with pytest.raises(InvalidAppendError):
        await store.append(events(stream, [3]), expected_version=1)
    result = await store.append(events(stream, [2]), expected_version=1)
    assert result.version_of(stream) == 2


async def test_a_multi_stream_append_is_all_or_nothing(store):
    holder, index = uuid4(), uuid4()
    await store.append(events(index, [1]))
    with pytest.raises(ConcurrencyError) as raised:
        await store.append(events(holder, [1]) + events(index, [1]))
    assert raised.value.stream_id == index
    assert await store.read_stream(holder) == []
    result = await store.append(events(holder, [1]) + events(index, [2]))
    assert result.version_of(holder) == 1 and result.version_of(index) == 2


async def test_only_one_of_two_racing_appends_to_the_same_version_wins(store):
    stream = uuid4()
    outcomes = await asyncio.gather(
        store.append(events(stream, [1], "first")),
        store.append(events(stream, [1], "second")),
        return_exceptions=True,
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["AppendResult", "ConcurrencyError"]
    assert len(await store.read_stream(stream)) == 1


async def test_non_consecutive_versions_are_refused_before_anything_is_written(store):
    stream = uuid4()
    with pytest.raises(InvalidAppendError):
        await store.append(events(stream, [1, 3]))
    assert await store.head_position() == 0


async def test_a_retried_command_returns_the_original_result_and_appends_nothing(store):
    command = uuid4()
    stream = uuid4()
    original = await store.append(events(stream, [1, 2]), command_id=command)
    # The retry would build a different stream (a new id), as RegisterPerson does.
    retry = await store.append(events(uuid4(), [1]), command_id=command)
    assert retry.duplicate and not original.duplicate
    assert retry.positions == original.positions
    assert retry.version_of(stream) == 2
    assert await store.head_position() == 2
    assert (await store.command_result(command)).positions == (1, 2)
    assert await store.command_result(uuid4()) is None


async def test_concurrent_retries_of_one_command_append_once(store):
    command = uuid4()
    results = await asyncio.gather(
        *(store.append(events(uuid4(), [1]), command_id=command) for _ in range(10))
    )
    assert len({r.positions for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert await store.head_position() == 1


async def test_a_command_id_reused_for_a_different_command_is_refused(store):
    command = uuid4()
    asked = command_digest("register", {"name": "Ada"})
    original = await store.append(events(uuid4(), [1]), command_id=command, command_digest=asked)
    # The same command again is a retry...
    retry = await store.append(events(uuid4(), [1]), command_id=command, command_digest=asked)
    assert retry.duplicate and retry.positions == original.positions
    # ...but the id sent with a different command is refused, not answered with the
    # first command's result, and nothing is written.
    other = command_digest("register", {"name": "Grace"})
    with pytest.raises(CommandReusedError) as raised:
        await store.append(events(uuid4(), [1]), command_id=command, command_digest=other)
    assert raised.value.command_id == command
    with pytest.raises(CommandReusedError):
        await store.command_result(command, command_digest=other)
    assert (await store.command_result(command, command_digest=asked)).positions == (1,)
    assert await store.head_position() == 1


async def test_a_command_id_reused_within_one_group_is_refused_for_the_different_command(store):
    command = uuid4()
    first, second = command_digest("a", {}), command_digest("b", {})
    outcomes = await asyncio.gather(
        store.append(events(uuid4(), [1]), command_id=command, command_digest=first),
        store.append(events(uuid4(), [1]), command_id=command, command_digest=second),
        store.append(events(uuid4(), [1]), command_id=command, command_digest=first),
        return_exceptions=True,
    )
    assert [type(o).__name__ for o in outcomes] == [
        "AppendResult",
        "CommandReusedError",
        "AppendResult",
    ]
    assert outcomes[2].duplicate and outcomes[2].positions == outcomes[0].positions
    assert await store.head_position() == 1


async def test_a_command_without_a_digest_is_matched_by_its_id_alone(store):
    # Events written before digests were kept have none; a retry sent without one
    # (an older client library) is matched by command id as before.
    command = uuid4()
    original = await store.append(events(uuid4(), [1]), command_id=command)
    retry = await store.append(
        events(uuid4(), [1]), command_id=command, command_digest=command_digest("x", {})
    )
    assert retry.duplicate and retry.positions == original.positions


async def test_a_store_made_before_command_digests_gains_the_column_and_keeps_its_events(
    pool, schema
):
    old = EventStore(pool, schema)
    command = uuid4()
    await pool.execute(f'ALTER TABLE "{schema}".stored_events DROP COLUMN command_digest')
    await pool.execute(
        f'INSERT INTO "{schema}".stored_events (originator_id, originator_version, topic, '
        f"state, notification_id, command_id) VALUES ($1, 1, 't', '', 1, $2)",
        uuid4(),
        command,
    )
    await pool.execute(f'UPDATE "{schema}".stored_events_head SET last_position = 1')
    async with pool.acquire() as conn:
        await create_schema(conn, schema)
        await create_schema(conn, schema)  # and again: nothing more to do
    digest = command_digest("x", {})
    # The old event has no digest, so a retry of its command still finds it.
    retry = await old.append(events(uuid4(), [1]), command_id=command, command_digest=digest)
    assert retry.duplicate and retry.positions == (1,)
    fresh = await old.append(events(uuid4(), [1]), command_id=uuid4(), command_digest=digest)
    assert fresh.positions == (2,)
    await old.close()


def test_a_command_digest_depends_on_the_command_and_every_argument():
    assert command_digest("register", {"a": 1, "b": "x"}) == command_digest(
        "register", {"b": "x", "a": 1}
    )
    assert command_digest("register", {"a": 1}) != command_digest("rename", {"a": 1})
    assert command_digest("register", {"a": 1}) != command_digest("register", {"a": 2})
    assert command_digest("register", {"a": None}) != command_digest("register", {})
    assert len(command_digest("register", {})) == 32
    # Values count, not object identity or set order; anything it cannot render exactly
    # is refused rather than guessed at.
    name = Name("Ann", "Example")
    assert command_digest("r", {"n": name, "kinds": {Kind.PNC, Kind.NOMS}}) == command_digest(
        "r", {"n": Name("Ann", "Example"), "kinds": {Kind.NOMS, Kind.PNC}}
    )
    assert command_digest("r", {"n": name}) != command_digest("r", {"n": Name("Ann", "Exampel")})
    assert command_digest("r", {"d": date(1980, 5, 17)}) != command_digest(
        "r", {"d": date(1980, 5, 18)}
    )
    with pytest.raises(TypeError):
        command_digest("r", {"x": object()})


async def test_recorded_at_is_the_database_clock_and_never_goes_backwards(store, pool):
    before = await pool.fetchval("SELECT clock_timestamp()")
    await asyncio.gather(*(store.append(events(uuid4(), [1])) for _ in range(50)))
    after = await pool.fetchval("SELECT clock_timestamp()")
    recorded = [e.recorded_at for e in await store.read_all(limit=100)]
    assert recorded == sorted(recorded)
    assert before <= recorded[0] and recorded[-1] <= after


async def test_actor_command_and_trace_are_stored_with_each_event(store):
    command = uuid4()
    await store.append(events(uuid4(), [1]), command_id=command, actor="pom:alice", trace_id="ab12")
    (event,) = await store.read_all()
    assert (event.command_id, event.actor, event.trace_id) == (command, "pom:alice", "ab12")


async def test_one_bad_append_in_a_group_fails_alone(store):
    # A NUL byte cannot be stored in a text column: the group's transaction rolls back,
    # and the writer retries each append alone so only the bad one fails.
    good = [store.append(events(uuid4(), [1])) for _ in range(5)]
    bad = store.append([StoredEvent(uuid4(), 1, "bad\x00topic", b"")])
    outcomes = await asyncio.gather(*good, bad, return_exceptions=True)
    assert [type(o).__name__ for o in outcomes[:5]] == ["AppendResult"] * 5
    assert isinstance(outcomes[5], Exception)
    assert [e.position for e in await store.read_all()] == [1, 2, 3, 4, 5]


async def test_an_append_after_postgresql_ended_the_writers_session_succeeds(store, pool):
    first = await store.append(events(uuid4(), [1]))
    writer = store._writer_conn
    ended = asyncio.Event()
    writer.add_termination_listener(lambda _: ended.set())
    assert await pool.fetchval("SELECT pg_terminate_backend($1)", writer.get_server_pid())
    await asyncio.wait_for(ended.wait(), 5)  # the client has seen the session end
    second = await asyncio.wait_for(store.append(events(uuid4(), [1])), 5)
    assert second.positions == (first.last_position + 1,)
    assert store._writer_conn is not writer


async def test_the_writer_outlives_its_session_ending_under_an_append(store, pool):
    await store.append(events(uuid4(), [1]))
    pid = store._writer_conn.get_server_pid()
    assert await pool.fetchval("SELECT pg_terminate_backend($1)", pid)
    # Whether the client has noticed yet or not, this append either lands or fails as
    # an unknown outcome (retrying with its command id is safe); it never hangs...
    command_id = uuid4()
    stream = uuid4()
    try:
        await asyncio.wait_for(store.append(events(stream, [1]), command_id=command_id), 5)
    except EventStoreError as error:
        assert "outcome unknown" in str(error)
    # ...and the writer carries on: the retry lands once.
    retried = await asyncio.wait_for(store.append(events(stream, [1]), command_id=command_id), 5)
    assert [e.originator_id for e in await store.read_stream(stream)] == [stream]
    assert retried.last_position == await store.head_position()


async def test_the_writer_finds_earlier_commands_by_index_with_plans_made_on_an_empty_store(
    store,
):
    # After a prepared statement's first five runs, PostgreSQL may settle on a generic
    # plan, made for the table's size then, and keep it until the table is next analysed.
    # Made while the store was nearly empty, a plan that scanned the table for earlier
    # commands would go on scanning it as it grew. Here the generic plan is forced, on
    # the writer's own connection, for each statement that looks up earlier commands.
    await store.append(events(uuid4(), [1]), command_id=uuid4())
    writer = store._writer_conn
    asked = "'{" + ",".join(str(uuid4()) for _ in range(5)) + "}'"
    checks = {"optimistic": store._q.check, "locking": store._q.lock_and_check}
    for name, statement in checks.items():
        plan = await generic_plan(writer, statement, f"{asked}, {asked}")
        assert "stored_events_command_id_idx" in plan, (name, plan)
        assert "Seq Scan on stored_events " not in plan, (name, plan)


async def test_statements_on_the_pool_are_planned_once_generically(pool):
    # Left to itself, PostgreSQL plans a prepared statement's first five runs for their
    # arguments (custom plans), each time. Our pool asks for the generic plan at once.
    statement = "SELECT count(*) FROM pg_class WHERE relpages > $1"
    async with pool.acquire() as conn:
        for pages in range(3):
            await conn.fetchval(statement, pages)
        generic, custom = await conn.fetchrow(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
            statement,
        )
    assert (generic, custom) == (3, 0)


async def test_a_batch_window_gathers_appends_arriving_together_into_fewer_groups(pool, schema):
    store = EventStore(pool, schema, batch_window=0.3)
    try:
        # One caller's appends, one after another, are never held back.
        for _ in range(3):
            await store.append(events(uuid4(), [1]))
        assert (store.groups, store.held_groups) == (3, 0)
        # Appends arriving together: the first wave is written at once as one group;
        # after a shared group, the next waits out the window, gathering the next wave.
        first = [store.append(events(uuid4(), [1])) for _ in range(10)]
        written = asyncio.gather(*first)
        await asyncio.sleep(0)  # the first wave is queued; the writer takes it whole
        second = asyncio.gather(*(store.append(events(uuid4(), [1])) for _ in range(10)))
        await written
        third = asyncio.gather(*(store.append(events(uuid4(), [1])) for _ in range(10)))
        await asyncio.gather(second, third)
        assert store.groups == 3 + 2
        assert store.grouped_appends == 3 + 30
        assert store.held_groups == 1
        # A lone append after a quiet spell longer than the window goes at once (the
        # spell stood for by moving the last group's start a window back).
        store._group_started -= store.batch_window
        await store.append(events(uuid4(), [1]))
        assert store.held_groups == 1
        assert [e.position for e in await store.read_all()] == list(range(1, 35))
    finally:
        await store.close()


async def test_an_adaptive_window_shrinks_while_the_loop_idles_between_held_groups(pool, schema):
    # A busy clock that never moves: the loop looks idle all the time groups are held.
    # The period is longer than the widest window, so held groups keep one period going.
    adaptive = AdaptiveWindow(0.002, 0.016, period=0.04, step=2.0, busy_clock=lambda: 0.0)
    store = EventStore(pool, schema, batch_window=0.016, adapt_window=adaptive)
    try:
        # Waves of appends arriving together: each group after the first is held.
        for _ in range(16):
            await asyncio.gather(*(store.append(events(uuid4(), [1])) for _ in range(4)))
        assert adaptive.shrunk >= 2
        assert 0.002 <= store.batch_window <= 0.004
        assert [e.position for e in await store.read_all()] == list(range(1, 65))
    finally:
        await store.close()


@pytest.mark.parametrize("fill, grows", [(64, True), (2, False)])
async def test_an_adaptive_window_grows_on_a_busy_loop_only_while_groups_are_short_of_its_fill(
    pool, schema, fill, grows
):
    # A busy clock running twice as fast as the loop's: the loop looks short of CPU all
    # the time. Waves of 4 appends make groups of about 4: short of 64, not of 2. Each
    # group is held at least 2 ms, so 40 waves outlast a 40 ms period.
    adaptive = AdaptiveWindow(
        0.002, 0.016, period=0.04, step=2.0, fill=fill, busy_clock=lambda: 2 * time.monotonic()
    )
    store = EventStore(pool, schema, batch_window=0.002, adapt_window=adaptive)
    try:
        for _ in range(40):
            await asyncio.gather(*(store.append(events(uuid4(), [1])) for _ in range(4)))
        assert store.grouped_appends == 160
        if grows:
            assert adaptive.grew >= 1 and store.batch_window > 0.002
        else:
            assert adaptive.grew == 0 and store.batch_window == 0.002
    finally:
        await store.close()


async def test_closing_a_store_writes_the_group_it_was_holding_back(pool, schema):
    store = EventStore(pool, schema, batch_window=0.3)
    await asyncio.gather(*(store.append(events(uuid4(), [1])) for _ in range(2)))
    holding = holding_told(store)
    held = asyncio.ensure_future(store.append(events(uuid4(), [1])))
    await holding.wait()  # the writer is waiting out the window now
    await store.close()
    assert (await held).positions == (3,)
    assert store.held_groups == 1


async def test_a_writer_stopped_while_holding_a_group_fails_its_callers_and_is_replaced(
    pool, schema
):
    store = EventStore(pool, schema, batch_window=0.3)
    try:
        await asyncio.gather(*(store.append(events(uuid4(), [1])) for _ in range(2)))
        holding = holding_told(store)
        held = asyncio.ensure_future(store.append(events(uuid4(), [1])))
        await holding.wait()  # the writer is waiting out the window now
        store._writer.cancel()
        with pytest.raises(EventStoreError, match="outcome unknown"):
            await asyncio.wait_for(held, 5)  # failed, not left waiting
        # The next append starts a new writer.
        assert (await asyncio.wait_for(store.append(events(uuid4(), [1])), 5)).positions == (3,)
    finally:
        await store.close()


class _HeldReleases:
    """A pool whose releases wait until `go_on` is set."""

    def __init__(self, pool) -> None:
        self._pool = pool
        self.releasing = asyncio.Event()
        self.go_on = asyncio.Event()

    def __getattr__(self, name):
        return getattr(self._pool, name)

    async def release(self, conn) -> None:
        self.releasing.set()
        await self.go_on.wait()
        await self._pool.release(conn)


async def test_an_append_while_a_stopped_writer_gives_its_connection_back_lands(pool, schema):
    held = _HeldReleases(pool)
    store = EventStore(held, schema)
    try:
        await store.append(events(uuid4(), [1]))
        store._writer.cancel()
        await asyncio.wait_for(held.releasing.wait(), 5)
        # The stopped writer is still giving its connection back: a new one takes this.
        appended = await asyncio.wait_for(store.append(events(uuid4(), [1])), 5)
        assert appended.positions == (2,)
    finally:
        held.go_on.set()
        await store.close()


async def test_a_closed_store_refuses_appends(pool, schema):
    store = EventStore(pool, schema)
    await store.append(events(uuid4(), [1]))
    await store.close()
    with pytest.raises(Exception, match="closed"):
        await store.append(events(uuid4(), [1]))


@pytest.mark.parametrize(
    "optimistic_attempts", [3, 1, 0], ids=["optimistic", "optimistic-then-lock", "locking"]
)
async def test_an_append_that_waited_for_another_writer_checks_against_its_events(
    pool, schema, optimistic_attempts
):
    # Another process holds the head lock and writes version 1 of a stream; our append of
    # version 2 starts meanwhile, waits for the lock, and must chain onto that version 1,
    # which its statement's snapshot (taken before the wait) could not see. With one
    # optimistic attempt, the lost race sends the retry down the locking path.
    store = EventStore(pool, schema, optimistic_attempts=optimistic_attempts)
    from libs.eventstore import audit_store
    from libs.eventstore.hashchain import GENESIS, event_hash
    from libs.eventstore.records import to_micros

    stream = uuid4()
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        head, now = await conn.fetchrow(
            f'SELECT last_position, clock_timestamp() FROM "{schema}".stored_events_head FOR UPDATE'
        )
        digest = event_hash(
            GENESIS,
            originator_id=stream,
            originator_version=1,
            position=head + 1,
            topic="t",
            state=b"theirs",
            recorded_micros=to_micros(now),
            command_id=None,
            actor=None,
            trace_id=None,
        )
        await conn.execute(
            f'INSERT INTO "{schema}".stored_events (notification_id, originator_id, '
            "originator_version, topic, state, recorded_at, hash) "
            "VALUES ($1, $2, 1, 't', 'theirs', $3, $4)",
            head + 1,
            stream,
            now,
            digest,
        )
        await conn.execute(
            f'UPDATE "{schema}".stored_events_head SET last_position = $1, last_recorded_at = $2',
            head + 1,
            now,
        )
        ours = asyncio.create_task(store.append(events(stream, [2])))
        # Wait until our append is blocked on the head lock, then let the other commit.
        while not await pool.fetchval(  # noqa: ASYNC110 - polls the server, not a local flag
            "SELECT count(*) FROM pg_locks WHERE NOT granted"
        ):
            await asyncio.sleep(0.005)
        assert not ours.done()
        await tx.commit()
    result = await asyncio.wait_for(ours, 5)
    assert result.positions == (head + 2,)
    # Optimistically, the first write found the head moved and wrote nothing; the
    # retry read the other writer's event. Locking, the lock wait did the same.
    assert store.lost_races == (1 if optimistic_attempts else 0)
    report = await audit_store(store)
    assert report.intact, report.problems
    await store.close()
