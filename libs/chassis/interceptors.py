"""The request interceptor: authenticates the bearer token, checks the caller's roles,
puts the actor and trace id where the repository stamps them on events, and turns domain
errors into statuses with google.rpc details.

Each method's handler is wrapped once and reused; the wrapper does the per-call work
(reading the metadata, checking the token and roles) itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.rpc import code_pb2
from throughline.common.v1 import errors_pb2

from libs.chassis.auth import AccessPolicy, InvalidTokenError, TokenVerifier
from libs.chassis.errors import build_status, status_for, to_grpc_status
from libs.chassis.telemetry import request_trace_id
from libs.eventstore.context import Actor, current_actor, current_trace_id

R = errors_pb2.ErrorReason


class RequestInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, verifier: TokenVerifier, policy: AccessPolicy) -> None:
        self._verifier = verifier
        self._policy = policy
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method = details.method
        if handler is None or self._policy.is_open(method):
            return handler
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method] = (handler, self._wrap(method, handler))
        return cached[1]

    def _authorise(self, method: str, metadata: dict[str, str]) -> tuple[Actor | None, Any]:
        header = metadata.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None, build_status(
                code_pb2.UNAUTHENTICATED,
                "send 'authorization: Bearer <token>' metadata",
                R.ERROR_REASON_UNAUTHENTICATED,
            )
        try:
            actor = self._verifier.verify(token.strip())
        except InvalidTokenError as error:
            return None, build_status(
                code_pb2.UNAUTHENTICATED, str(error), R.ERROR_REASON_UNAUTHENTICATED
            )
        allowed = self._policy.roles_for(method)
        if not actor.roles & allowed:
            needed = ", ".join(sorted(allowed)) or "a role no one has been granted yet"
            return actor, build_status(
                code_pb2.PERMISSION_DENIED,
                f"{method} needs one of: {needed}",
                R.ERROR_REASON_PERMISSION_DENIED,
                metadata={"method": method, "subject": actor.subject},
            )
        return actor, None

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        authorise = self._authorise
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                async with _CallScope(authorise, method, context):
                    return await inner(request, context)

            make = grpc.unary_unary_rpc_method_handler
            behaviour = unary_unary
        elif handler.unary_stream:
            inner_stream = handler.unary_stream

            async def unary_stream(request, context):
                async with _CallScope(authorise, method, context):
                    async for response in inner_stream(request, context):
                        yield response

            make = grpc.unary_stream_rpc_method_handler
            behaviour = unary_stream
        else:
            raise TypeError(f"client-streaming methods are not served by this chassis: {handler}")
        return make(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _CallScope:
    """Refuses the call, or runs it with its actor and trace id bound and domain errors
    turned into statuses. Unknown errors propagate (gRPC reports them as UNKNOWN)."""

    __slots__ = ("_authorise", "_context", "_method", "_tokens")

    def __init__(self, authorise, method: str, context: grpc.aio.ServicerContext) -> None:
        self._authorise = authorise
        self._method = method
        self._context = context

    async def __aenter__(self) -> None:
        metadata = dict(self._context.invocation_metadata() or ())
        actor, refusal = self._authorise(self._method, metadata)
        if refusal is not None:
            await self._context.abort_with_status(to_grpc_status(refusal))
        self._tokens = (
            current_actor.set(actor),
            current_trace_id.set(request_trace_id(metadata)),
        )

    async def __aexit__(self, kind, error, traceback) -> bool:
        actor_token, trace_token = self._tokens
        current_actor.reset(actor_token)
        current_trace_id.reset(trace_token)
        if isinstance(error, Exception) and (status := status_for(error)) is not None:
            await self._context.abort_with_status(to_grpc_status(status))
        return False
