"""The plan PostgreSQL keeps for a prepared statement once it settles on a generic one."""

from __future__ import annotations

import asyncpg


async def generic_plan(conn: asyncpg.Connection, statement: str, arguments: str) -> str:
    """EXPLAIN of `statement`'s generic plan on `conn`, run with `arguments` (SQL
    literals, comma-separated). A generic plan is one plan for any arguments, made for
    the tables as they are when it is made."""
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    try:
        await conn.execute(f"PREPARE generic_plan_probe AS {statement}")
        try:
            rows = await conn.fetch(f"EXPLAIN EXECUTE generic_plan_probe({arguments})")
        finally:
            await conn.execute("DEALLOCATE generic_plan_probe")
    finally:
        await conn.execute("RESET plan_cache_mode")
    return "\n".join(row[0] for row in rows)
