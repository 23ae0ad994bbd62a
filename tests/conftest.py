"""Test fixtures: a throwaway database per test session on real PostgreSQL (DATABASE_URL,
or the embedded server), and a fresh schema per test so tests never collide."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from infra.postgres import database_url
from libs.eventstore import EventStore, create_pool, create_schema


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def test_database_url() -> Iterator[str]:
    server_url = database_url()
    name = f"throughline_test_{secrets.token_hex(4)}"

    async def create() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    import asyncio

    asyncio.run(create())
    url = with_database(server_url, name)
    os.environ["THROUGHLINE_TEST_DATABASE_URL"] = url
    yield url
    asyncio.run(drop())


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


@pytest.fixture
async def store(pool: asyncpg.Pool, schema: str) -> AsyncIterator[EventStore]:
    store = EventStore(pool, schema, poll_interval=0.2)
    yield store
    await store.close()
