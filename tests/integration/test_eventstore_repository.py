"""The repository: aggregates saved and rebuilt through the library's Mapper, with
snapshots, upcasting and encryption; and the library's own recorder reading our table."""

from __future__ import annotations

from datetime import date
from uuid import uuid4

import pytest
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.cryptography import AESCipher
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from libs.eventstore import Repository, create_mapper
from libs.eventstore.context import Actor, current_actor, current_trace_id


class Ledger(Aggregate):
    @event("Opened")
    def __init__(self, owner: str, opened_on: date) -> None:
        self.owner = owner
        self.opened_on = opened_on
        self.entries: list[str] = []

    @event("EntryRecorded")
    def record(self, text: str) -> None:
        self.entries.append(text)


async def test_an_aggregate_is_saved_and_rebuilt(store):
    repo = Repository(store, create_mapper(cipher_key=""))
    ledger = Ledger(owner="Zoë O'Brien-Łukasz", opened_on=date(1990, 2, 28))
    ledger.record("first")
    ledger.record("second")
    result = await repo.save(ledger, command_id=uuid4())
    assert result.version_of(ledger.id) == 3

    again = await repo.get(ledger.id)
    assert (again.owner, again.opened_on, again.entries) == (
        "Zoë O'Brien-Łukasz",
        date(1990, 2, 28),
        ["first", "second"],
    )
    as_of_two = await repo.get(ledger.id, version=2)
    assert as_of_two.entries == ["first"]


async def test_a_missing_aggregate_raises_not_found(store):
    with pytest.raises(AggregateNotFoundError):
        await Repository(store, create_mapper(cipher_key="")).get(uuid4())


async def test_the_request_actor_and_trace_are_stamped_on_saved_events(store):
    repo = Repository(store, create_mapper(cipher_key=""))
    actor_token = current_actor.set(Actor("com:bob", frozenset({"probation"})))
    trace_token = current_trace_id.set("0af7651916cd43dd8448eb211c80319c")
    try:
        await repo.save(Ledger(owner="x", opened_on=date(2000, 1, 1)))
    finally:
        current_actor.reset(actor_token)
        current_trace_id.reset(trace_token)
    (recorded,) = await store.read_all()
    assert (recorded.actor, recorded.trace_id) == ("com:bob", "0af7651916cd43dd8448eb211c80319c")


async def test_a_snapshot_is_used_and_later_events_applied_on_top(store, pool, schema):
    repo = Repository(store, create_mapper(cipher_key=""))
    ledger = Ledger(owner="x", opened_on=date(2000, 1, 1))
    ledger.record("a")
    await repo.save(ledger)
    await repo.take_snapshot(ledger.id)
    assert await pool.fetchval(f'SELECT count(*) FROM "{schema}".snapshots') == 1
    ledger = await repo.get(ledger.id)
    ledger.record("b")
    await repo.save(ledger)
    rebuilt = await repo.get(ledger.id)
    assert rebuilt.entries == ["a", "b"] and rebuilt.version == 3


async def test_event_state_is_encrypted_at_rest_when_a_key_is_set(store):
    key = AESCipher.create_key(32)
    repo = Repository(store, create_mapper(cipher_key=key))
    ledger = Ledger(owner="Secret Name", opened_on=date(2000, 1, 1))
    await repo.save(ledger)
    (recorded,) = await store.read_all()
    assert b"Secret Name" not in recorded.state
    assert (await repo.get(ledger.id)).owner == "Secret Name"
    with pytest.raises(Exception):  # noqa: B017 - wrong key cannot decrypt
        await Repository(store, create_mapper(cipher_key=AESCipher.create_key(32))).get(ledger.id)


class AccountV1(Aggregate):
    """How the aggregate was first written."""

    @event("Opened")
    def __init__(self, name: str) -> None:
        self.name = name


class AccountV2(Aggregate):
    """The same aggregate after its Opened event gained a field."""

    class Opened(Aggregate.Created):
        class_version = 2
        name: str
        region: str

        @staticmethod
        def upcast_v1_v2(state: dict) -> None:
            state["region"] = "unknown"

    @event(Opened)
    def __init__(self, name: str, region: str) -> None:
        self.name = name
        self.region = region


async def test_old_events_are_upcast_when_read(store):
    mapper = create_mapper(cipher_key="")
    # An event stored by the first version of the code, relabelled as the code's
    # classes now stand (the class changed in place, keeping its topic).
    old = mapper.to_stored_event(AccountV1(name="old").collect_events()[0])
    state = mapper.transcoder.decode(old.state)
    assert "class_version" not in state and "region" not in state
    state["originator_topic"] = get_topic(AccountV2)
    await store.append(
        [
            StoredEvent(
                old.originator_id, 1, get_topic(AccountV2.Opened), mapper.transcoder.encode(state)
            )
        ]
    )
    upgraded = await Repository(store, mapper).get(old.originator_id)
    assert (type(upgraded), upgraded.name, upgraded.region) == (AccountV2, "old", "unknown")


def test_the_library_postgres_recorder_reads_our_table(test_database_url):
    """Table compatibility: eventsourcing's own PostgresApplicationRecorder reads events we
    wrote, with the same positions."""
    import asyncio

    from eventsourcing.postgres import PostgresApplicationRecorder

    from libs.eventstore import EventStore, create_pool, create_schema
    from libs.eventstore.database import library_datastore
    from tests.conftest import new_schema_name

    schema = new_schema_name("compat")
    stream = uuid4()

    async def write() -> None:
        pool = await create_pool(test_database_url)
        async with pool.acquire() as conn:
            await create_schema(conn, schema)
        store = EventStore(pool, schema)
        await store.append(
            [StoredEvent(stream, 1, "t1", b"one"), StoredEvent(stream, 2, "t2", b"two")]
        )
        await store.close()
        await pool.close()

    asyncio.run(write())
    datastore = library_datastore(test_database_url, schema)
    recorder = PostgresApplicationRecorder(datastore, events_table_name="stored_events")
    try:
        stored = recorder.select_events(stream)
        notifications = recorder.select_notifications(start=None, limit=10)
    finally:
        datastore.close()
    assert [(e.originator_version, e.topic, e.state) for e in stored] == [
        (1, "t1", b"one"),
        (2, "t2", b"two"),
    ]
    assert [n.id for n in notifications] == [1, 2]
