"""The request interceptor: authenticates the bearer token, checks the caller's roles,
puts the actor and trace id where the repository stamps them on events, and turns domain
errors into statuses with google.rpc details."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.rpc import code_pb2
from throughline.common.v1 import errors_pb2

from libs.chassis.auth import AccessPolicy, InvalidTokenError, TokenVerifier
from libs.chassis.errors import build_status, status_for, to_grpc_status
from libs.chassis.telemetry import current_trace_id
from libs.eventstore.context import Actor, current_actor
from libs.eventstore.context import current_trace_id as trace_id_var

R = errors_pb2.ErrorReason


class RequestInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, verifier: TokenVerifier, policy: AccessPolicy) -> None:
        self._verifier = verifier
        self._policy = policy

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or self._policy.is_open(details.method):
            return handler
        actor, refusal = self._authorise(details)
        return _wrap(handler, actor, refusal)

    def _authorise(self, details: grpc.HandlerCallDetails) -> tuple[Actor | None, Any]:
        metadata = dict(details.invocation_metadata or ())
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
        allowed = self._policy.roles_for(details.method)
        if not actor.roles & allowed:
            needed = ", ".join(sorted(allowed)) or "a role no one has been granted yet"
            return actor, build_status(
                code_pb2.PERMISSION_DENIED,
                f"{details.method} needs one of: {needed}",
                R.ERROR_REASON_PERMISSION_DENIED,
                metadata={"method": details.method, "subject": actor.subject},
            )
        return actor, None


@contextlib.asynccontextmanager
async def _request_scope(
    context: grpc.aio.ServicerContext, actor: Actor | None, refusal: Any
) -> AsyncIterator[None]:
    """Refuses the call, or runs it with the actor and trace id bound and domain errors
    turned into statuses. Unknown errors propagate (gRPC reports them as UNKNOWN)."""
    if refusal is not None:
        await context.abort_with_status(to_grpc_status(refusal))
    actor_token = current_actor.set(actor)
    trace_token = trace_id_var.set(current_trace_id())
    try:
        yield
    except Exception as error:
        status = status_for(error)
        if status is None:
            raise
        await context.abort_with_status(to_grpc_status(status))
    finally:
        current_actor.reset(actor_token)
        trace_id_var.reset(trace_token)


def _wrap(handler: grpc.RpcMethodHandler, actor: Actor | None, refusal: Any):
    if handler.unary_unary:
        inner = handler.unary_unary

        async def unary_unary(request, context):
            async with _request_scope(context, actor, refusal):
                return await inner(request, context)

        make = grpc.unary_unary_rpc_method_handler
        behaviour = unary_unary
    elif handler.unary_stream:
        inner_stream = handler.unary_stream

        async def unary_stream(request, context):
            async with _request_scope(context, actor, refusal):
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
