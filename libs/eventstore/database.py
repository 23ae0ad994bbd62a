"""Connection pools for the event store."""

from __future__ import annotations

import asyncpg


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """A pool sized for one store: the writer and the LISTEN connection each hold one."""
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        # Our queries are small and frequent; JIT compilation only adds latency.
        server_settings={"jit": "off", "application_name": "throughline"},
    )
