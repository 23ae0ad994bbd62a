"""The shapes that go into and come out of the event store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple
from uuid import UUID


class RecordedEvent(NamedTuple):
    """An event as the store recorded it, with its position in the store's feed.

    A named tuple rather than a dataclass because catch-up reads build hundreds of
    thousands of these a second."""

    position: int
    originator_id: UUID
    originator_version: int
    topic: str
    state: bytes
    recorded_at: datetime
    command_id: UUID | None
    actor: str | None
    trace_id: str | None
    hash: bytes | None


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
