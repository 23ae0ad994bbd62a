"""The access log's writer, without a database: grouping, failure and shutdown."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import pytest

from libs.eventstore.access_log import AccessLog, AccessLogClosedError


class StalledPool:
    """A pool whose statements never finish until released, recording each one."""

    def __init__(self) -> None:
        self.statements: list[int] = []
        self.release = asyncio.Event()

    async def execute(self, sql: str, *columns: list) -> None:
        if not columns:
            return  # making the month's partition
        self.statements.append(len(columns[0]))
        await self.release.wait()


async def test_a_writer_stopped_at_shutdown_fails_every_waiting_caller():
    pool = StalledPool()
    log = AccessLog(pool, "identity")  # type: ignore[arg-type]
    first = asyncio.create_task(log.record("get_person", {}, [uuid4()]))
    await asyncio.sleep(0)  # its statement is under way
    waiting = asyncio.create_task(log.record("get_person", {}, [uuid4()]))
    await asyncio.sleep(0)
    assert pool.statements == [1]  # the second waits for the next statement
    assert log._writer is not None
    log._writer.cancel()
    for caller in (first, waiting):
        with pytest.raises(AccessLogClosedError):
            await asyncio.wait_for(caller, 5)  # a caller left waiting fails, not hangs


async def test_a_failed_write_fails_its_callers_and_the_next_entries_are_written():
    class FailingOnce(StalledPool):
        async def execute(self, sql: str, *columns: list) -> None:
            if not columns:
                return
            self.statements.append(len(columns[0]))
            if len(self.statements) == 1:
                await asyncio.sleep(0)
                raise ConnectionError("database went away")

    pool = FailingOnce()
    log = AccessLog(pool, "identity")  # type: ignore[arg-type]
    first = asyncio.create_task(log.record("get_person", {}, [uuid4()]))
    await asyncio.sleep(0)
    later = [asyncio.create_task(log.record("get_person", {}, [uuid4()])) for _ in range(3)]
    with pytest.raises(ConnectionError):
        await first
    await asyncio.gather(*later)  # written together, after the failure
    assert pool.statements == [1, 3]
