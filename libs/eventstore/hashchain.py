"""The per-stream hash chain: each event's hash covers the previous event's hash in the
same stream and everything stored about the event (but `command_digest`, which only
tells a retry from a reused command id), so an edit, a deletion or a reordering after
the fact no longer verifies."""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterable
from uuid import UUID

from libs.eventstore.records import RecordedEvent

GENESIS = bytes(32)
_EPOCH_MICROS = struct.Struct(">q")
_INTS = struct.Struct(">qq")
_LENGTH = struct.Struct(">I")
_NO_COMMAND = bytes(16)
_NO_TEXT = b"\xff\xff\xff\xff"


def _text(value: str | None) -> bytes:
    if value is None:
        return _NO_TEXT
    encoded = value.encode("utf-8")
    return _LENGTH.pack(len(encoded)) + encoded


# A store has a few dozen topics, and each is hashed with every event of its kind.
_topic_text = functools.lru_cache(maxsize=1024)(_text)


def command_part(command_id: UUID | None, actor: str | None, trace_id: str | None) -> bytes:
    """What an event's hash covers of the command that wrote it: the same for each of
    that command's events, so a writer computes it once per command."""
    return b"".join(
        (command_id.bytes if command_id else _NO_COMMAND, _text(actor), _text(trace_id))
    )


def chain(
    previous: bytes,
    originator_id: UUID,
    originator_version: int,
    position: int,
    recorded_micros: int,
    command: bytes,
    topic: str,
    state: bytes,
) -> bytes:
    """`event_hash`, with the command's part already made by `command_part`."""
    return hashlib.sha256(
        b"".join(
            (
                previous,
                originator_id.bytes,
                _INTS.pack(originator_version, position),
                _EPOCH_MICROS.pack(recorded_micros),
                command,
                _topic_text(topic),
                _LENGTH.pack(len(state)),
                state,
            )
        )
    ).digest()


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
    """SHA-256 over, in order: the previous hash, the stream id, version and position,
    the recording time (epoch microseconds), the command id (zeros when none), the
    actor, trace id and topic (each length-prefixed, all ones when none) and the
    length-prefixed state."""
    return chain(
        previous,
        originator_id,
        originator_version,
        position,
        recorded_micros,
        command_part(command_id, actor, trace_id),
        topic,
        state,
    )


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
