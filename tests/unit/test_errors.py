"""What callers are told when something other than their request went wrong: a
projection behind, or PostgreSQL unreachable, is UNAVAILABLE (worth a retry); a query
PostgreSQL refused is not explained (UNKNOWN), since it is our bug, not theirs."""

from __future__ import annotations

from uuid import uuid4

import asyncpg
import pytest
from google.rpc import code_pb2, error_details_pb2

from libs.chassis.errors import status_for
from libs.eventstore import CommandReusedError, EventStoreError, ProjectionLagError


def error_info(status) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def test_a_projection_behind_is_unavailable_and_says_how_far_it_got():
    status = status_for(ProjectionLagError("identity_search", "identity", 7, 9, 5.0))
    assert status.code == code_pb2.UNAVAILABLE
    assert "up to 7, not yet 9" in status.message
    info = error_info(status)
    assert info.reason == "ERROR_REASON_UNAVAILABLE"
    assert dict(info.metadata) == {"projection": "identity_search", "position": "7", "wanted": "9"}


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients already"),
        ConnectionRefusedError(111, "Connect call failed"),
        asyncpg.InterfaceError(
            "cannot call Connection.fetch(): connection has been released back to the pool"
        ),
    ],
    ids=lambda e: type(e).__name__,
)
def test_postgresql_unreachable_is_unavailable(error):
    status = status_for(error)
    assert status is not None and status.code == code_pb2.UNAVAILABLE
    assert "retry" in status.message


def test_a_reused_command_id_already_exists_and_names_the_field():
    command = uuid4()
    status = status_for(CommandReusedError(command))
    assert status.code == code_pb2.ALREADY_EXISTS
    assert dict(error_info(status).metadata) == {"kind": "command", "key": str(command)}
    request = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(request)
    assert [v.field for v in request.field_violations] == ["command_id"]


def test_a_failed_save_is_unavailable_and_safe_to_retry():
    status = status_for(EventStoreError("append outcome unknown: connection lost"))
    assert status.code == code_pb2.UNAVAILABLE and "same command id" in status.message


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.UndefinedTableError('relation "x" does not exist'),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        KeyError("bug"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_our_own_faults_are_not_explained(error):
    assert status_for(error) is None
