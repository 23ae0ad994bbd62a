"""The shapes that go into and come out of the event store."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from operator import itemgetter
from typing import Any
from uuid import UUID

import asyncpg

from libs.eventstore.jsonencoding import compact_json_encoder

UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(instant: datetime) -> int:
    """Microseconds since the Unix epoch, exactly (PostgreSQL's own resolution)."""
    delta = instant - UNIX_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class RecordedEvent(asyncpg.Record):
    """An event as the store recorded it, with its position in the store's feed.

    The row itself, as asyncpg decodes it (fields by name or index), because catch-up
    reads return hundreds of thousands a second and copying each into another object
    costs a third of that. The recording time arrives as integer microseconds, which
    PostgreSQL computes faster than the client builds datetimes; `recorded_at` makes one
    when asked."""

    position: int = property(itemgetter(0))  # type: ignore[assignment]
    originator_id: UUID = property(itemgetter(1))  # type: ignore[assignment]
    originator_version: int = property(itemgetter(2))  # type: ignore[assignment]
    topic: str = property(itemgetter(3))  # type: ignore[assignment]
    state: bytes = property(itemgetter(4))  # type: ignore[assignment]
    recorded_micros: int = property(itemgetter(5))  # type: ignore[assignment]
    command_id: UUID | None = property(itemgetter(6))  # type: ignore[assignment]
    actor: str | None = property(itemgetter(7))  # type: ignore[assignment]
    trace_id: str | None = property(itemgetter(8))  # type: ignore[assignment]
    hash: bytes | None = property(itemgetter(9))  # type: ignore[assignment]

    @property
    def recorded_at(self) -> datetime:
        return UNIX_EPOCH + timedelta(microseconds=self[5])


@dataclass(frozen=True)
class StreamHead:
    """Where one stream stood after an append."""

    stream_id: UUID
    version: int


@dataclass(frozen=True)
class AppendResult:
    """What an append wrote: the positions it was given, the head of each stream it
    touched, and whether it was a retry of a command already recorded (in which case
    these are the original results and nothing new was written)."""

    positions: tuple[int, ...]
    streams: tuple[StreamHead, ...]
    recorded_at: datetime | None
    duplicate: bool = False

    @property
    def last_position(self) -> int:
        return self.positions[-1] if self.positions else 0

    def version_of(self, stream_id: UUID) -> int | None:
        for head in self.streams:
            if head.stream_id == stream_id:
                return head.version
        return None


@dataclass(frozen=True)
class AppendMetadata:
    """Who and what caused an append: stored with every event it writes."""

    command_id: UUID | None = None
    actor: str | None = None
    trace_id: str | None = None
    command_digest: bytes | None = None


def command_digest(command: str, arguments: Mapping[str, Any]) -> bytes:
    """A SHA-256 digest of what a command asks: its name and every argument the caller
    gave, in a canonical JSON form (keys sorted; dates, UUIDs, enums, sets and
    dataclasses by value). A retry asks the same and has the same digest; another
    command sent with the same command id does not, and the store refuses it.

    Pass only what the caller sent, never values the handler makes up (a clock reading,
    a new id): those differ between a command and its retry."""
    return hashlib.sha256(_encode_canonical([command, arguments]).encode()).digest()


def _canonical(value: Any) -> Any:
    names = _field_names(type(value))
    if names is not None:
        # Field by field, one level: the encoder comes back here for what they hold.
        return {name: getattr(value, name) for name in names}
    if isinstance(value, date):  # datetimes too
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=lambda v: json.dumps(v, sort_keys=True, default=_canonical))
    raise TypeError(f"cannot put {type(value).__name__} in a command digest: {value!r}")


@functools.cache
def _field_names(kind: type) -> tuple[str, ...] | None:
    """A dataclass's field names, or None for any other type: asked once per type, as
    every command is digested on the way to the store."""
    if dataclasses.is_dataclass(kind):
        return tuple(f.name for f in dataclasses.fields(kind))
    return None


_encode_canonical = compact_json_encoder(_canonical, sort_keys=True)
