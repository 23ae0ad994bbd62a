"""The per-stream hash chain: each event's hash covers the previous event's hash in the
same stream and everything stored about the event (but `command_digest`, which only
tells a retry from a reused command id), so an edit, a deletion or a reordering after
the fact no longer verifies."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from uuid import UUID

from libs.eventstore.records import RecordedEvent

GENESIS = bytes(32)
_EPOCH_MICROS = struct.Struct(">q")
_INTS = struct.Struct(">qq")


def _text(value: str | None) -> bytes:
    if value is None:
        return b"\xff\xff\xff\xff"
    encoded = value.encode("utf-8")
    return struct.pack(">I", len(encoded)) + encoded


def event_hash(
    previous: bytes,
    *,
    originator_id: UUID,
    originator_version: int,
    position: int,
    topic: str,
    state: bytes,
    recorded_micros: int,
    command_id: UUID | None,
    actor: str | None,
    trace_id: str | None,
) -> bytes:
    digest = hashlib.sha256(previous)
    digest.update(originator_id.bytes)
    digest.update(_INTS.pack(originator_version, position))
    digest.update(_EPOCH_MICROS.pack(recorded_micros))
    digest.update(command_id.bytes if command_id else bytes(16))
    digest.update(_text(actor))
    digest.update(_text(trace_id))
    digest.update(_text(topic))
    digest.update(struct.pack(">I", len(state)))
    digest.update(state)
    return digest.digest()


def recompute(previous: bytes, event: RecordedEvent) -> bytes:
    return event_hash(
        previous,
        originator_id=event.originator_id,
        originator_version=event.originator_version,
        position=event.position,
        topic=event.topic,
        state=event.state,
        recorded_micros=event.recorded_micros,
        command_id=event.command_id,
        actor=event.actor,
        trace_id=event.trace_id,
    )


def verify_stream(events: Iterable[RecordedEvent]) -> list[str]:
    """Checks one stream's events, in version order, against their chain; returns a
    sentence for each problem found."""
    problems: list[str] = []
    previous = GENESIS
    expected_version: int | None = None
    for event in events:
        if expected_version is not None and event.originator_version != expected_version:
            problems.append(
                f"stream {event.originator_id}: version {expected_version} is missing "
                f"(next stored is {event.originator_version})"
            )
        if event.hash != recompute(previous, event):
            problems.append(
                f"stream {event.originator_id} version {event.originator_version} "
                f"(position {event.position}): hash does not match its contents "
                "and predecessor"
            )
        previous = event.hash or GENESIS
        expected_version = event.originator_version + 1
    return problems
