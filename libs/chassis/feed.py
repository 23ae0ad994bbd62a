"""The public event feed every service exposes for its own events: `ReadEvents` and a
server-streaming `SubscribeEvents`, each event in an `EventEnvelope` with a typed payload."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message
from throughline.feed.v1 import feed_pb2, feed_pb2_grpc

from libs.domain.errors import InvalidFieldError
from libs.eventstore import EventStore, RecordedEvent

MAX_BATCH = 10_000
DEFAULT_BATCH = 1000


@dataclass(frozen=True)
class TranslatedEvent:
    """What a service says about one of its events for the feed."""

    event_type: str
    occurred_at: datetime
    payload: Message


Translator = Callable[[RecordedEvent], TranslatedEvent]


def _timestamp(instant: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(instant)
    return stamp


def envelope(event: RecordedEvent, translate: Translator) -> feed_pb2.EventEnvelope:
    translated = translate(event)
    payload = any_pb2.Any()
    payload.Pack(translated.payload, type_url_prefix="type.throughline.dev/")
    return feed_pb2.EventEnvelope(
        position=event.position,
        stream_id=str(event.originator_id),
        stream_version=event.originator_version,
        event_type=translated.event_type,
        occurred_at=_timestamp(translated.occurred_at),
        recorded_at=_timestamp(event.recorded_at),
        actor=event.actor or "",
        command_id=str(event.command_id) if event.command_id else "",
        trace_id=event.trace_id or "",
        hash=event.hash or b"",
        payload=payload,
    )


def _validated(after: int, size: int, size_field: str) -> tuple[int, int]:
    violations = []
    if after < 0:
        violations.append(("after", "must be 0 or a position (a positive number)"))
    if size and not 1 <= size <= MAX_BATCH:
        violations.append((size_field, f"must be between 1 and {MAX_BATCH}, or 0 for 1000"))
    if violations:
        raise InvalidFieldError(*violations)
    return after, size or DEFAULT_BATCH


class EventFeedServicer(feed_pb2_grpc.EventFeedServiceServicer):
    def __init__(self, store: EventStore, translate: Translator) -> None:
        self._store = store
        self._translate = translate

    async def ReadEvents(self, request, context) -> feed_pb2.ReadEventsResponse:
        after, limit = _validated(request.after, request.limit, "limit")
        head = await self._store.head_position()
        events = await self._store.read_all(after, limit, upto=head)
        return feed_pb2.ReadEventsResponse(
            events=[envelope(e, self._translate) for e in events], head_position=head
        )

    async def SubscribeEvents(
        self, request, context
    ) -> AsyncIterator[feed_pb2.SubscribeEventsResponse]:
        after, size = _validated(request.after, request.batch_size, "batch_size")
        async for batch in self._store.subscribe_batches(after, batch_size=size):
            yield feed_pb2.SubscribeEventsResponse(
                events=[envelope(e, self._translate) for e in batch]
            )
