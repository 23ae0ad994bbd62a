"""The hash chain and the audit: tampering after the fact is detected."""

from __future__ import annotations

from types import SimpleNamespace
from uuid import uuid4

from eventsourcing.persistence import StoredEvent

from libs.eventstore import audit_store

HASHED_FIELDS = (
    "originator_id",
    "originator_version",
    "position",
    "topic",
    "recorded_micros",
    "command_id",
    "actor",
    "trace_id",
)


async def _three_streams(store):
    streams = [uuid4() for _ in range(3)]
    for version in (1, 2, 3):
        await store.append([StoredEvent(s, version, "t", f"{version}".encode()) for s in streams])
    return streams


async def test_an_untouched_store_verifies(store):
    await _three_streams(store)
    report = await audit_store(store)
    assert report.intact, report.problems
    assert (report.events_checked, report.streams_checked) == (9, 3)


async def test_a_modified_event_is_detected(store, pool, schema):
    streams = await _three_streams(store)
    await pool.execute(
        f'UPDATE "{schema}".stored_events SET state = $1 '
        "WHERE originator_id = $2 AND originator_version = 2",
        b"forged",
        streams[0],
    )
    report = await audit_store(store)
    assert not report.intact
    assert any(f"stream {streams[0]} version 2" in p for p in report.problems)


async def test_a_deleted_event_is_detected(store, pool, schema):
    streams = await _three_streams(store)
    await pool.execute(
        f'DELETE FROM "{schema}".stored_events WHERE originator_id = $1 AND originator_version = 2',
        streams[1],
    )
    report = await audit_store(store)
    assert any("missing" in p for p in report.problems)
    assert any(f"stream {streams[1]}: version 2 is missing" in p for p in report.problems)


async def test_deleting_the_newest_event_is_detected_by_the_head(store, pool, schema):
    await _three_streams(store)
    await pool.execute(f'DELETE FROM "{schema}".stored_events WHERE notification_id = 9')
    report = await audit_store(store)
    assert any("positions 9..9 are missing" in p for p in report.problems)


async def test_reordered_events_are_detected(store, pool, schema):
    streams = await _three_streams(store)
    # Swap the contents of versions 1 and 2 of one stream.
    await pool.execute(
        f'UPDATE "{schema}".stored_events AS e SET state = o.state, topic = o.topic '
        f'FROM "{schema}".stored_events AS o WHERE e.originator_id = $1 AND o.originator_id = $1 '
        "AND e.originator_version + o.originator_version = 3",
        streams[2],
    )
    report = await audit_store(store)
    assert sum(f"stream {streams[2]} version" in p for p in report.problems) >= 2


async def test_a_forged_event_with_a_recomputed_hash_breaks_its_successor(store, pool, schema):
    from libs.eventstore.hashchain import recompute

    streams = await _three_streams(store)
    target = (await store.read_stream(streams[0]))[0]
    forged = SimpleNamespace(
        **{name: getattr(target, name) for name in HASHED_FIELDS}, state=b"forged"
    )
    await pool.execute(
        f'UPDATE "{schema}".stored_events SET state = $1, hash = $2 '
        "WHERE originator_id = $3 AND originator_version = 1",
        b"forged",
        recompute(bytes(32), forged),
        streams[0],
    )
    report = await audit_store(store)
    assert any(f"stream {streams[0]} version 2" in p for p in report.problems)
    assert not any(f"stream {streams[0]} version 1 " in p for p in report.problems)
