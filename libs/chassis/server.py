"""Builds and runs a service's grpc.aio server: its servicers, the event feed, the standard
health service and server reflection, behind tracing and the request interceptor, with a
graceful stop; and sets the process's garbage collector for serving."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from throughline.feed.v1 import feed_pb2, feed_pb2_grpc

from libs.chassis.auth import AccessPolicy, TokenVerifier
from libs.chassis.feed import EventFeedServicer
from libs.chassis.interceptors import RequestInterceptor
from libs.chassis.telemetry import configure_telemetry, tracing_interceptors

log = logging.getLogger(__name__)

FEED_SERVICE = feed_pb2.DESCRIPTOR.services_by_name["EventFeedService"].full_name

# grpc.aio serves every call on the event loop's one thread, and each call creates hundreds
# of short-lived objects. CPython starts a young-generation collection every 700 net
# allocations (its default): about 100 a second under RegisterPerson load, each walking
# the objects of every call in flight. At 5,000, most of them are freed before a collection
# comes: the loop's time in the collector fell from about 19 to 3 microseconds per
# RegisterPerson (16 clients), for at most a few megabytes of objects held a little longer.
GC_YOUNG_THRESHOLD = 5000


def collect_less_often() -> None:
    """Raises the young-generation threshold to GC_YOUNG_THRESHOLD, unless it is higher."""
    young, *older = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), *older)


class GenericHandlersOnly:
    """The server as `add_*_to_server` functions see it: generated ones add their service
    twice, as a generic handler and as registered methods, and this keeps only the
    generic handler, which serves every method the same way; a service added only as
    registered methods is served through a generic handler made for it.

    grpc.aio (1.85) waits for the next call on one future per registered method, with an
    `asyncio.wait` over all of them each time a call arrives. For the identity server
    (23 registered methods with the feed, health and reflection) that cost its event
    loop about 30 microseconds per RegisterPerson, 5% (six alternating rounds of 16
    clients, 528 against 558 microseconds of loop CPU per command); for an echo server,
    25 registered methods cost about 10 microseconds a call. Generic handlers find a
    method with a dictionary look-up per service instead."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server
        self._services: set[str] = set()

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self._server.add_generic_rpc_handlers(handlers)
        self._services.update(
            h.service_name() for h in handlers if isinstance(h, grpc.ServiceRpcHandler)
        )

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        """Serves `handlers` through a generic handler, unless one for `service` was
        added already (as generated code adds it just before)."""
        if service not in self._services:
            self.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, handlers),)
            )


@dataclass(frozen=True)
class Registration:
    """One servicer to serve: its full service name and the generated add function
    (which `Server.start` calls with a GenericHandlersOnly in place of the server)."""

    service_name: str
    add: Callable[[Any, grpc.aio.Server], None]
    servicer: Any


class Server:
    def __init__(
        self,
        name: str,
        registrations: list[Registration],
        *,
        verifier: TokenVerifier,
        policy: AccessPolicy,
        feed: EventFeedServicer | None = None,
    ) -> None:
        configure_telemetry(name)
        self.name = name
        self._registrations = list(registrations)
        if feed is not None:
            self._registrations.append(
                Registration(
                    FEED_SERVICE, feed_pb2_grpc.add_EventFeedServiceServicer_to_server, feed
                )
            )
        self._server = grpc.aio.server(
            interceptors=[*tracing_interceptors(), RequestInterceptor(verifier, policy)]
        )
        self._health = health.aio.HealthServicer()
        self.port: int | None = None

    @property
    def service_names(self) -> list[str]:
        return [r.service_name for r in self._registrations]

    async def start(self, address: str = "127.0.0.1:0") -> int:
        collect_less_often()
        generic_only: Any = GenericHandlersOnly(self._server)
        for registration in self._registrations:
            registration.add(registration.servicer, generic_only)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, generic_only)
        # What reflection.enable_server_reflection does for a grpc.aio server, which it
        # recognises by type (and so would not recognise through the adapter).
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(
                [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
            ),
            generic_only,
        )
        self.port = self._server.add_insecure_port(address)
        await self._server.start()
        for name in ["", *self.service_names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        """Reports NOT_SERVING, then lets calls in flight finish for up to `grace` seconds."""
        for name in ["", *self.service_names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.stop(grace)


async def serve_until_signalled(server: Server, address: str, *, grace: float = 5.0) -> None:
    """Starts the server and stops it gracefully on SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    port = await server.start(address)
    host = address.rsplit(":", 1)[0]
    print(f"serving {', '.join(server.service_names)} on {host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(grace)
