"""Errors raised by the event store. They subclass the eventsourcing library's own error
types, so code written against the library's recorders handles ours the same way."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.persistence import IntegrityError, PersistenceError


class EventStoreError(PersistenceError):
    """Base class for event store failures."""


class ConcurrencyError(EventStoreError, IntegrityError):
    """A stream was not at the version the append expected: someone else wrote first.

    Nothing of the append was written."""

    def __init__(self, stream_id: UUID, expected_version: int | None, actual_version: int | None):
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        super().__init__(
            f"stream {stream_id} is at version {actual_version}, "
            f"but the append expected version {expected_version}"
        )


class InvalidAppendError(EventStoreError, IntegrityError):
    """An append that could never succeed, such as versions that are not consecutive."""


class CommandReusedError(EventStoreError, IntegrityError):
    """A command id already recorded for a different command: not a retry. Answering
    with the first command's result would tell the caller that its command was done
    when it was not, so the store refuses it and writes nothing."""

    def __init__(self, command_id: UUID):
        self.command_id = command_id
        super().__init__(
            f"command id {command_id} was already used for a different command: a retry "
            f"must repeat its command exactly, and a new command needs a new command id"
        )


class EventStoreClosedError(EventStoreError):
    """The store was closed before the append could be written."""


class ProjectionLagError(EventStoreError, TimeoutError):
    """A projection did not reach a position in time: it is behind, or retrying a batch
    it cannot apply yet. The write itself is safe; the view will follow."""

    def __init__(self, projection: str, upstream: str, position: int, wanted: int, timeout: float):
        self.projection = projection
        self.upstream = upstream
        self.position = position
        self.wanted = wanted
        super().__init__(
            f"projection {projection!r} has applied {upstream!r} up to {position}, "
            f"not yet {wanted}, after {timeout}s"
        )


class UnreadableStoreError(EventStoreError):
    """The store holds events this service cannot read: they were written with another
    cipher key, or none (or with it, and the service has none)."""
