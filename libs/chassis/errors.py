"""Turns domain and store errors into gRPC statuses with `google.rpc` details: a
`BadRequest` naming each field and rule, and an `ErrorInfo` whose reason is a
`throughline.common.v1.ErrorReason` name."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from throughline.common.v1 import errors_pb2

from libs.domain.errors import (
    AlreadyExistsError,
    DomainError,
    InvalidFieldError,
    NotFoundError,
    RuleViolatedError,
)
from libs.eventstore.database import database_unavailable
from libs.eventstore.errors import (
    CommandReusedError,
    ConcurrencyError,
    EventStoreError,
    ProjectionLagError,
)

ERROR_DOMAIN = "throughline.dev"


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def build_status(
    code: int,
    message: str,
    reason: int,
    *,
    metadata: dict[str, str] | None = None,
    violations: list[tuple[str, str]] | None = None,
) -> status_pb2.Status:
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=errors_pb2.ErrorReason.Name(reason),
                domain=ERROR_DOMAIN,
                metadata=metadata or {},
            )
        )
    ]
    if violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=rule)
                        for f, rule in violations
                    ]
                )
            )
        )
    return status_pb2.Status(code=code, message=message, details=details)


def status_for(error: Exception) -> status_pb2.Status | None:
    """The status for a known error, or None for one we should not explain to callers."""
    R = errors_pb2.ErrorReason
    if isinstance(error, InvalidFieldError):
        return build_status(
            code_pb2.INVALID_ARGUMENT,
            str(error),
            R.ERROR_REASON_INVALID_FIELD,
            violations=error.violations,
        )
    if isinstance(error, NotFoundError):
        metadata = {"kind": error.kind, "key": error.key}
        if error.known_at is not None:
            metadata["known_at"] = error.known_at.isoformat()
        return build_status(
            code_pb2.NOT_FOUND, str(error), R.ERROR_REASON_NOT_FOUND, metadata=metadata
        )
    if isinstance(error, AlreadyExistsError):
        metadata = {"kind": error.kind, "key": error.key}
        if error.holder:
            metadata["holder"] = error.holder
        return build_status(
            code_pb2.ALREADY_EXISTS, str(error), R.ERROR_REASON_ALREADY_EXISTS, metadata=metadata
        )
    if isinstance(error, RuleViolatedError):
        return build_status(
            code_pb2.FAILED_PRECONDITION,
            str(error),
            R.ERROR_REASON_RULE_VIOLATED,
            metadata={"rule": error.rule},
        )
    if isinstance(error, ConcurrencyError):
        return build_status(
            code_pb2.ABORTED,
            f"{error}; reload and retry",
            R.ERROR_REASON_CONCURRENCY_CONFLICT,
            metadata={"stream_id": str(error.stream_id)},
        )
    if isinstance(error, CommandReusedError):
        return build_status(
            code_pb2.ALREADY_EXISTS,
            str(error),
            R.ERROR_REASON_ALREADY_EXISTS,
            metadata={"kind": "command", "key": str(error.command_id)},
            violations=[
                (
                    "command_id",
                    "was already used for a different command: send a new command id, "
                    "or repeat the first command exactly to retry it",
                )
            ],
        )
    if isinstance(error, ProjectionLagError):
        return build_status(
            code_pb2.UNAVAILABLE,
            f"{error}; the write is safe and the view will follow: retry shortly",
            R.ERROR_REASON_UNAVAILABLE,
            metadata={
                "projection": error.projection,
                "position": str(error.position),
                "wanted": str(error.wanted),
            },
        )
    if isinstance(error, EventStoreError):
        return build_status(
            code_pb2.UNAVAILABLE,
            "the record could not be saved; retrying with the same command id is safe",
            R.ERROR_REASON_UNAVAILABLE,
        )
    if isinstance(error, DomainError):
        return build_status(code_pb2.FAILED_PRECONDITION, str(error), R.ERROR_REASON_RULE_VIOLATED)
    if database_unavailable(error):
        return build_status(
            code_pb2.UNAVAILABLE,
            "the database is unavailable; retry shortly (a command retried with the same "
            "command id is recorded once)",
            R.ERROR_REASON_UNAVAILABLE,
        )
    return None


def to_grpc_status(status: status_pb2.Status) -> grpc.Status:
    return rpc_status.to_status(status)
