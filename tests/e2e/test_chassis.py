"""The service chassis end to end: a real grpc.aio server on port 0 with the event feed,
health, reflection, authentication, roles and error details, called over real channels."""

from __future__ import annotations

import asyncio
import gc
import json
from datetime import date
from uuid import UUID, uuid4

import grpc
import pytest
from eventsourcing.domain import Aggregate, event
from google.protobuf import struct_pb2, wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from throughline.feed.v1 import feed_pb2, feed_pb2_grpc

from libs.chassis.auth import AccessPolicy, TokenVerifier
from libs.chassis.feed import EventFeedServicer, TranslatedEvent
from libs.chassis.server import GC_YOUNG_THRESHOLD, Registration, Server, collect_less_often
from libs.domain.errors import (
    AlreadyExistsError,
    InvalidFieldError,
    NotFoundError,
    RuleViolatedError,
)
from libs.eventstore import ConcurrencyError, Repository, create_mapper
from tests.e2e.rpc_details import details_of

SECRET = "test-secret-that-is-long-enough-for-hs256"


class Note(Aggregate):
    @event("Written")
    def __init__(self, text: str, written_on: date) -> None:
        self.text = text
        self.written_on = written_on


def translate_with(mapper):
    def translate(recorded):
        domain_event = mapper.to_domain_event(recorded)
        payload = struct_pb2.Struct()
        payload.update({"text": getattr(domain_event, "text", "")})
        return TranslatedEvent(
            event_type=f"test.{type(domain_event).__qualname__}",
            occurred_at=domain_event.timestamp,
            payload=payload,
        )

    return translate


def note_servicer(repo: Repository):
    failures = {
        "invalid": InvalidFieldError(("text", "must not be empty"), ("written_on", "in future")),
        "missing": NotFoundError("person", "A1234AA"),
        "taken": AlreadyExistsError("identifier", "PNC 2012/0394773H", holder="p-1"),
        "rule": RuleViolatedError("merge_into_self", "a person cannot be merged into themself"),
        "conflict": ConcurrencyError(UUID(int=7), 1, 2),
    }

    async def write(request: wrappers_pb2.StringValue, context) -> wrappers_pb2.StringValue:
        if request.value in failures:
            raise failures[request.value]
        note = Note(text=request.value, written_on=date(2026, 11, 22))
        await repo.save(note, command_id=uuid4())
        return wrappers_pb2.StringValue(value=str(note.id))

    return grpc.method_handlers_generic_handler(
        "test.NoteService",
        {
            "Write": grpc.unary_unary_rpc_method_handler(
                write,
                request_deserializer=wrappers_pb2.StringValue.FromString,
                response_serializer=wrappers_pb2.StringValue.SerializeToString,
            )
        },
    )


@pytest.fixture
async def server(store):
    mapper = create_mapper(cipher_key="")
    verifier = TokenVerifier(SECRET)
    policy = AccessPolicy(
        {
            "/test.NoteService/": frozenset({"notes.write"}),
            "/throughline.feed.v1.EventFeedService/": frozenset({"feed.read"}),
        }
    )
    server = Server(
        "notes",
        [
            Registration(
                "test.NoteService",
                lambda servicer, srv: srv.add_generic_rpc_handlers((servicer,)),
                note_servicer(Repository(store, mapper)),
            )
        ],
        verifier=verifier,
        policy=policy,
        feed=EventFeedServicer(store, translate_with(mapper)),
    )
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield channel, verifier
    await channel.close()
    await server.stop(0)


def auth(verifier, *roles, subject="alice"):
    return (("authorization", f"Bearer {verifier.mint(subject, roles)}"),)


def write_stub(channel):
    return channel.unary_unary(
        "/test.NoteService/Write",
        request_serializer=wrappers_pb2.StringValue.SerializeToString,
        response_deserializer=wrappers_pb2.StringValue.FromString,
    )


async def test_health_and_reflection_answer_without_a_token(server):
    channel, _ = server
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = set()
    async for response in responses:
        names = {s.name for s in response.list_services_response.service}
    assert {"throughline.feed.v1.EventFeedService", "grpc.health.v1.Health"} <= names


async def test_a_call_without_a_token_is_unauthenticated(server):
    channel, _ = server
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await write_stub(channel)(wrappers_pb2.StringValue(value="x"))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert details_of(raised.value)["ErrorInfo"].reason == "ERROR_REASON_UNAUTHENTICATED"


async def test_a_forged_or_expired_token_is_unauthenticated(server):
    channel, _ = server
    forged = TokenVerifier("another-secret-another-secret-another!").mint(
        "mallory", ["notes.write"]
    )
    expired = TokenVerifier(SECRET).mint("alice", ["notes.write"], ttl_seconds=-120)
    for token in (forged, expired, "not-a-jwt"):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await write_stub(channel)(
                wrappers_pb2.StringValue(value="x"),
                metadata=(("authorization", f"Bearer {token}"),),
            )
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_role_without_the_right_is_permission_denied(server):
    channel, verifier = server
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await write_stub(channel)(
            wrappers_pb2.StringValue(value="x"), metadata=auth(verifier, "feed.read")
        )
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "notes.write" in raised.value.details()


@pytest.mark.parametrize(
    ("value", "code", "reason"),
    [
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT, "ERROR_REASON_INVALID_FIELD"),
        ("missing", grpc.StatusCode.NOT_FOUND, "ERROR_REASON_NOT_FOUND"),
        ("taken", grpc.StatusCode.ALREADY_EXISTS, "ERROR_REASON_ALREADY_EXISTS"),
        ("rule", grpc.StatusCode.FAILED_PRECONDITION, "ERROR_REASON_RULE_VIOLATED"),
        ("conflict", grpc.StatusCode.ABORTED, "ERROR_REASON_CONCURRENCY_CONFLICT"),
    ],
)
async def test_domain_errors_become_statuses_with_rpc_details(server, value, code, reason):
    channel, verifier = server
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await write_stub(channel)(
            wrappers_pb2.StringValue(value=value), metadata=auth(verifier, "notes.write")
        )
    assert raised.value.code() == code
    details = details_of(raised.value)
    assert details["ErrorInfo"].reason == reason
    assert details["ErrorInfo"].domain == "throughline.dev"
    if value == "invalid":
        violations = [(v.field, v.description) for v in details["BadRequest"].field_violations]
        assert violations == [("text", "must not be empty"), ("written_on", "in future")]
    if value == "taken":
        assert details["ErrorInfo"].metadata["holder"] == "p-1"


async def test_events_record_the_caller_and_trace_and_reach_the_feed(server, store):
    channel, verifier = server
    reply = await write_stub(channel)(
        wrappers_pb2.StringValue(value="hello"),
        metadata=auth(verifier, "notes.write", subject="pom:ann"),
    )
    feed = feed_pb2_grpc.EventFeedServiceStub(channel)
    response = await feed.ReadEvents(
        feed_pb2.ReadEventsRequest(after=0, limit=10), metadata=auth(verifier, "feed.read")
    )
    assert response.head_position == 1
    (envelope,) = response.events
    assert envelope.stream_id == reply.value
    assert (envelope.position, envelope.stream_version) == (1, 1)
    assert envelope.actor == "pom:ann"
    assert len(envelope.trace_id) == 32 and int(envelope.trace_id, 16) != 0
    assert envelope.event_type == "test.Note.Written"
    assert len(envelope.hash) == 32 and envelope.command_id
    payload = struct_pb2.Struct()
    assert envelope.payload.Unpack(payload)
    assert json.loads(json.dumps(dict(payload))) == {"text": "hello"}
    assert envelope.recorded_at.ToDatetime() >= envelope.occurred_at.ToDatetime().replace(
        microsecond=0
    )


async def test_a_callers_traceparent_trace_id_is_kept_and_a_malformed_one_replaced(server):
    channel, verifier = server
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {
        "propagated": f"00-{caller_trace}-00f067aa0ba902b7-01",
        "malformed": "00-not-a-trace-01",
        "all zeros": f"00-{'0' * 32}-00f067aa0ba902b7-01",
    }
    for value in headers.values():
        await write_stub(channel)(
            wrappers_pb2.StringValue(value="traced"),
            metadata=(*auth(verifier, "notes.write"), ("traceparent", value)),
        )
    feed = feed_pb2_grpc.EventFeedServiceStub(channel)
    response = await feed.ReadEvents(
        feed_pb2.ReadEventsRequest(after=0, limit=10), metadata=auth(verifier, "feed.read")
    )
    propagated, malformed, zeros = (e.trace_id for e in response.events)
    assert propagated == caller_trace
    for fresh in (malformed, zeros):
        assert len(fresh) == 32 and int(fresh, 16) != 0 and fresh != caller_trace
    assert malformed != zeros


async def test_subscribe_streams_batches_then_live_events(server):
    channel, verifier = server
    for i in range(5):
        await write_stub(channel)(
            wrappers_pb2.StringValue(value=f"n{i}"), metadata=auth(verifier, "notes.write")
        )
    feed = feed_pb2_grpc.EventFeedServiceStub(channel)
    call = feed.SubscribeEvents(
        feed_pb2.SubscribeEventsRequest(after=1, batch_size=2), metadata=auth(verifier, "feed.read")
    )
    positions, batch_sizes = [], []
    first_batch = asyncio.Event()

    async def read():
        async for message in call:
            first_batch.set()
            batch_sizes.append(len(message.events))
            positions.extend(e.position for e in message.events)
            if positions[-1] == 6:
                return

    reader = asyncio.create_task(read())
    await asyncio.wait_for(first_batch.wait(), 5)
    await write_stub(channel)(
        wrappers_pb2.StringValue(value="live"), metadata=auth(verifier, "notes.write")
    )
    await asyncio.wait_for(reader, 5)
    call.cancel()
    assert positions == [2, 3, 4, 5, 6]
    assert max(batch_sizes) == 2


@pytest.fixture
async def small_messages(store):
    """A feed that keeps each message within 2 KB, and a way to write notes to it."""
    mapper = create_mapper(cipher_key="")
    verifier = TokenVerifier(SECRET)
    server = Server(
        "notes",
        [],
        verifier=verifier,
        policy=AccessPolicy({"/throughline.feed.v1.EventFeedService/": frozenset({"feed.read"})}),
        feed=EventFeedServicer(store, translate_with(mapper), max_response_bytes=2048),
    )
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    repository = Repository(store, mapper)

    async def write(n: int) -> None:
        for i in range(n):
            await repository.save(Note(text=f"{i:03d}" + "x" * 297, written_on=date(2026, 1, 1)))

    yield feed_pb2_grpc.EventFeedServiceStub(channel), auth(verifier, "feed.read"), write
    await channel.close()
    await server.stop(0)


async def test_a_read_of_large_events_is_cut_to_fit_one_message(small_messages):
    feed, metadata, write = small_messages
    await write(20)  # each envelope is a little over 300 bytes
    after, seen, sizes = 0, [], []
    while True:
        response = await feed.ReadEvents(
            feed_pb2.ReadEventsRequest(after=after, limit=100), metadata=metadata
        )
        if not response.events:
            break
        sizes.append(response.ByteSize())
        seen.extend(e.position for e in response.events)
        after = response.events[-1].position
    assert seen == list(range(1, 21))
    assert len(sizes) > 1 and max(sizes) <= 2048


async def test_a_subscribed_batch_of_large_events_arrives_as_several_messages(small_messages):
    feed, metadata, write = small_messages
    await write(20)
    call = feed.SubscribeEvents(
        feed_pb2.SubscribeEventsRequest(after=0, batch_size=100), metadata=metadata
    )
    seen, sizes = [], []
    async for message in call:
        sizes.append(message.ByteSize())
        seen.extend(e.position for e in message.events)
        if seen[-1] == 20:
            break
    call.cancel()
    assert seen == list(range(1, 21))
    assert len(sizes) > 1 and max(sizes) <= 2048


async def test_feed_arguments_are_validated_with_the_field_named(server):
    channel, verifier = server
    feed = feed_pb2_grpc.EventFeedServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await feed.ReadEvents(
            feed_pb2.ReadEventsRequest(after=-1, limit=20000), metadata=auth(verifier, "feed.read")
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = details_of(raised.value)["BadRequest"].field_violations
    assert [v.field for v in violations] == ["after", "limit"]


@pytest.fixture
def gc_threshold():
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


async def test_a_started_server_collects_young_objects_less_often(gc_threshold):
    gc.set_threshold(700, 10, 10)  # CPython's default
    server = Server("empty", [], verifier=TokenVerifier(SECRET), policy=AccessPolicy())
    await server.start()
    try:
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
    finally:
        await server.stop(0)


def test_a_higher_young_threshold_is_kept(gc_threshold):
    gc.set_threshold(50_000, 20, 30)
    collect_less_often()
    assert gc.get_threshold() == (50_000, 20, 30)


async def test_services_are_served_through_generic_handlers_alone(store, monkeypatch):
    # Registered methods would make grpc.aio wait on one future per method after every
    # call (see GenericHandlersOnly): none are added, and health and the feed still
    # answer (reflection answers in test_health_and_reflection_answer_without_a_token).
    registered: list[str] = []
    server = Server(
        "notes",
        [],
        verifier=TokenVerifier(SECRET),
        policy=AccessPolicy({"/throughline.feed.v1.EventFeedService/": frozenset({"feed.read"})}),
        feed=EventFeedServicer(store, translate_with(create_mapper(cipher_key=""))),
    )
    monkeypatch.setattr(
        server._server,
        "add_registered_method_handlers",
        lambda service, handlers: registered.append(service),
    )
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health_check = health_pb2_grpc.HealthStub(channel).Check
            answer = await health_check(health_pb2.HealthCheckRequest(service=""))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            feed = feed_pb2_grpc.EventFeedServiceStub(channel)
            token = TokenVerifier(SECRET).mint("alice", ["feed.read"])
            read = await feed.ReadEvents(
                feed_pb2.ReadEventsRequest(after=0, limit=1),
                metadata=(("authorization", f"Bearer {token}"),),
            )
            assert list(read.events) == []
        assert registered == []
    finally:
        await server.stop(0)


async def test_a_service_added_only_as_registered_methods_is_still_served():
    async def echo(request, context):
        return request

    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(
            echo,
            request_deserializer=wrappers_pb2.StringValue.FromString,
            response_serializer=wrappers_pb2.StringValue.SerializeToString,
        )
    }
    server = Server(
        "echo",
        [
            Registration(
                "test.EchoService",
                lambda servicer, srv: srv.add_registered_method_handlers(
                    "test.EchoService", servicer
                ),
                handlers,
            )
        ],
        verifier=TokenVerifier(SECRET),
        policy=AccessPolicy({"/test.EchoService/": frozenset({"echo"})}),
    )
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(
                "/test.EchoService/Echo",
                request_serializer=wrappers_pb2.StringValue.SerializeToString,
                response_deserializer=wrappers_pb2.StringValue.FromString,
            )
            token = TokenVerifier(SECRET).mint("alice", ["echo"])
            answer = await call(
                wrappers_pb2.StringValue(value="hello"),
                metadata=(("authorization", f"Bearer {token}"),),
            )
            assert answer.value == "hello"
    finally:
        await server.stop(0)
