"""Every stored event keeps a hash chained to its stream's previous one, and an audit
recomputes it: a deploy that changed how the hash is computed would make every event
written before it fail verification. These pin the hashes of today's form."""

from __future__ import annotations

from uuid import UUID

import pytest

from libs.eventstore.hashchain import GENESIS, event_hash

EVENT = dict(
    originator_id=UUID(int=5),
    originator_version=2,
    position=9,
    topic="a:B.C",
    state=b'{"x":1}',
    recorded_micros=1_700_000_000_000_000,
    command_id=UUID(int=6),
    actor="ann",
    trace_id=None,
)


def test_an_event_hash_covers_what_earlier_deploys_hashed():
    assert event_hash(GENESIS, **EVENT) == bytes.fromhex(
        "39479d5f0f0913373393d4a17bf4312ae628de15c2e05b036a7e831348c2264f"
    )


def test_an_event_without_command_or_actor_hashes_as_earlier_deploys_hashed_it():
    unlike = {
        **EVENT,
        "state": b"",
        "recorded_micros": -5,
        "command_id": None,
        "actor": None,
        "trace_id": "t\u00e9",
    }
    assert event_hash(b"\x01" * 32, **unlike) == bytes.fromhex(
        "1027ebfb6bb3ef9de6defbf4c1dcf20a0df272388f6acd8f3a17bd62ef7defb6"
    )


def test_the_previous_hash_changes_the_hash():
    assert event_hash(b"\x02" * 32, **EVENT) != event_hash(GENESIS, **EVENT)


# Another value for each field of EVENT.
CHANGED = [
    ("originator_id", UUID(int=4)),
    ("originator_version", 3),
    ("position", 10),
    ("topic", "a:B.D"),
    ("state", b"[]"),
    ("recorded_micros", 2),
    ("command_id", None),
    ("actor", "bob"),
    ("trace_id", "t"),
]


def test_every_field_is_tried():
    assert sorted(field for field, _ in CHANGED) == sorted(EVENT)


@pytest.mark.parametrize(("field", "value"), CHANGED)
def test_each_field_changes_the_hash(field, value):
    assert event_hash(GENESIS, **{**EVENT, field: value}) != event_hash(GENESIS, **EVENT)
