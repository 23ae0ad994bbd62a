"""The public event feed every service exposes for its own events: `ReadEvents` and a
server-streaming `SubscribeEvents`, each event in an `EventEnvelope` with a typed payload."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message
from throughline.feed.v1 import feed_pb2, feed_pb2_grpc

from libs.domain.errors import InvalidFieldError
from libs.eventstore import AccessLog, EventStore, RecordedEvent

MAX_BATCH = 10_000
DEFAULT_BATCH = 1000
# Below gRPC's default 4 MiB limit on a message a client receives: a batch of large
# events is sent as several messages (SubscribeEvents) or cut short (ReadEvents) rather
# than failing in every consumer with RESOURCE_EXHAUSTED.
MAX_RESPONSE_BYTES = 3 * 1024 * 1024


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


def chunks(
    events: Iterable[RecordedEvent], translate: Translator, max_bytes: int
) -> Iterator[list[feed_pb2.EventEnvelope]]:
    """The events' envelopes, in order, in lists whose encoded size stays within
    `max_bytes` (a list always holds at least one, however large)."""
    chunk: list[feed_pb2.EventEnvelope] = []
    size = 0
    for event in events:
        packed = envelope(event, translate)
        # Each repeated entry costs its own size, a tag byte and a length varint.
        entry = packed.ByteSize() + 6
        if chunk and size + entry > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(packed)
        size += entry
    if chunk:
        yield chunk


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
    def __init__(
        self,
        store: EventStore,
        translate: Translator,
        *,
        access_log: AccessLog | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        """With `access_log`, each message of events is logged before it is sent: who
        read it, its positions, and the streams (records) whose events it carried."""
        self._store = store
        self._translate = translate
        self._access_log = access_log
        self._max_bytes = max_response_bytes

    async def ReadEvents(self, request, context) -> feed_pb2.ReadEventsResponse:
        """Up to `limit` events after `after`: fewer when they would not fit in one
        message. Read on from the last position returned until it is `head_position`."""
        after, limit = _validated(request.after, request.limit, "limit")
        head = await self._store.head_position()
        events = await self._store.read_all(after, limit, upto=head)
        first = next(chunks(events, self._translate, self._max_bytes), [])
        await self._disclosed("read_events", first)
        return feed_pb2.ReadEventsResponse(events=first, head_position=head)

    async def SubscribeEvents(
        self, request, context
    ) -> AsyncIterator[feed_pb2.SubscribeEventsResponse]:
        after, size = _validated(request.after, request.batch_size, "batch_size")
        async for batch in self._store.subscribe_batches(after, batch_size=size):
            for chunk in chunks(batch, self._translate, self._max_bytes):
                await self._disclosed("subscribe_events", chunk)
                yield feed_pb2.SubscribeEventsResponse(events=chunk)

    async def _disclosed(self, action: str, chunk: list[feed_pb2.EventEnvelope]) -> None:
        if self._access_log is None or not chunk:
            return
        await self._access_log.record(
            action,
            {"positions": f"{chunk[0].position}..{chunk[-1].position}"},
            (UUID(envelope.stream_id) for envelope in chunk),
        )
