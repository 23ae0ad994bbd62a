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

    async def _enter(self, method: str, context: grpc.aio.ServicerContext) -> tuple[Any, Any]:
        """Refuses the call, or binds its actor and trace id and returns the tokens that
        unbind them."""
        metadata = dict(context.invocation_metadata() or ())
        actor, refusal = self._authorise(method, metadata)
        if refusal is not None:
            await context.abort_with_status(to_grpc_status(refusal))
        return current_actor.set(actor), current_trace_id.set(request_trace_id(metadata))

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        enter = self._enter
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                actor_token, trace_token = await enter(method, context)
                try:
                    return await inner(request, context)
                except Exception as error:
                    await _abort_for(error, context)
                finally:
                    current_actor.reset(actor_token)
                    current_trace_id.reset(trace_token)

            make = grpc.unary_unary_rpc_method_handler
            behaviour = unary_unary
        elif handler.unary_stream:
            inner_stream = handler.unary_stream

            async def unary_stream(request, context):
                actor_token, trace_token = await enter(method, context)
                try:
                    async for response in inner_stream(request, context):
                        yield response
                except Exception as error:
                    await _abort_for(error, context)
                finally:
                    current_actor.reset(actor_token)
                    current_trace_id.reset(trace_token)

            make = grpc.unary_stream_rpc_method_handler
            behaviour = unary_stream
        else:
            raise TypeError(f"client-streaming methods are not served by this chassis: {handler}")
        return make(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def _abort_for(error: Exception, context: grpc.aio.ServicerContext) -> None:
    """Ends the call with the status for a domain error; re-raises anything else (gRPC
    reports it as UNKNOWN)."""
    status = status_for(error)
    if status is None:
        raise error
    await context.abort_with_status(to_grpc_status(status))
