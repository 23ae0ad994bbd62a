"""Test fixtures: a throwaway database per test session on real PostgreSQL (DATABASE_URL,
or the embedded server), and a fresh schema per test so tests never collide."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from infra.postgres import create_database, database_url, drop_database
from libs.eventstore import EventStore, create_pool, create_schema


@pytest.fixture(scope="session")
def test_database_url() -> Iterator[str]:
    server_url = database_url()
    name = f"throughline_test_{secrets.token_hex(4)}"
    url = asyncio.run(create_database(server_url, name))
    os.environ["THROUGHLINE_TEST_DATABASE_URL"] = url
    yield url
    asyncio.run(drop_database(server_url, name))


@pytest.fixture(scope="session")
async def pool(test_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(test_database_url, min_size=2, max_size=20)
    yield pool
    await pool.close()


def new_schema_name(prefix: str = "t") -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


@pytest.fixture
async def schema(pool: asyncpg.Pool) -> str:
    name = new_schema_name()
    async with pool.acquire() as conn:
        await create_schema(conn, name)
    return name


# The store writes optimistically and falls back to taking the head-row lock after
# losing races; tests of the store run both ways, the second by never trying optimism.
WRITER_MODES = {"optimistic": 3, "locking": 0}


@pytest.fixture(params=list(WRITER_MODES))
def optimistic_attempts(request: pytest.FixtureRequest) -> int:
    return WRITER_MODES[request.param]


@pytest.fixture
async def store(
    pool: asyncpg.Pool, schema: str, optimistic_attempts: int
) -> AsyncIterator[EventStore]:
    store = EventStore(pool, schema, poll_interval=0.2, optimistic_attempts=optimistic_attempts)
    yield store
    await store.close()
