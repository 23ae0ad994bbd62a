"""Reads google.rpc details from a failed call, for assertions."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2


def details_of(error: grpc.aio.AioRpcError) -> dict:
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    status = status_pb2.Status.FromString(raw)
    found = {}
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.__name__] = message
    return found


def violations_of(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in details_of(error)["BadRequest"].field_violations]
