from uuid import uuid4

from eventsourcing.persistence import StoredEvent


async def test_append_then_read(store):
    sid = uuid4()
    r = await store.append([StoredEvent(sid, 1, "t", b"a"), StoredEvent(sid, 2, "t", b"b")])
    assert r.positions == (1, 2)
    events = await store.read_all()
    assert [e.state for e in events] == [b"a", b"b"]
