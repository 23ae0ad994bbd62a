"""Connection pools for the event store."""

from __future__ import annotations

import asyncpg

# PostgreSQL going away or refusing sessions for now: worth retrying shortly.
_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or was lost
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    ConnectionError,  # refused or reset before PostgreSQL said anything
)


def database_unavailable(error: BaseException) -> bool:
    """Whether `error` means PostgreSQL is unreachable or not serving for now, as opposed
    to a query it refused."""
    if isinstance(error, _UNAVAILABLE):
        return True
    # What asyncpg raises when a pooled connection it had handed out was lost.
    return isinstance(error, asyncpg.InterfaceError) and "released back to the pool" in str(error)


def session_ended(conn: asyncpg.pool.PoolConnectionProxy) -> bool:
    """Whether PostgreSQL has ended a pooled connection's session (a restart, a
    terminated backend). asyncpg then returns the connection to the pool by itself and
    detaches the proxy, whose methods raise from then on."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset: we set no session state, release any session advisory lock
    before the connection goes back (`verify_projection` holds one while it works), and
    LISTEN only on a connection that unlistens before it goes back (asyncpg still rolls
    back any open transaction first)."""


async def create_pool(
    dsn: str, *, min_size: int = 2, max_size: int = 10, application_name: str = "throughline"
) -> asyncpg.Pool:
    """A pool sized for one store: the writer and the LISTEN connection each hold one.
    Its sessions show as `application_name` in pg_stat_activity.

    asyncpg's default release sends a reset query (a round trip) every time a connection
    goes back to the pool; ours are released clean, so that query is skipped.

    Every statement runs on a generic plan: planned once per connection, never again
    per run. Left to choose, PostgreSQL plans a statement's first five runs for their
    arguments, then keeps a generic plan only if its estimate is no worse, so some
    statements (SearchPeople's) were planned on every run, which cost more than running
    them; and a generic plan it did keep was made for the tables' size then. Our SQL is
    written to have one right plan at any size and for any arguments: lookups by a key
    the caller gives probe that key's index (`LATERAL ... OFFSET 0` per key where there
    are several), and the tests check those plans with generic plans forced."""
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        reset=_keep_session,
        server_settings={
            # Our queries are small and frequent; JIT compilation only adds latency.
            "jit": "off",
            "plan_cache_mode": "force_generic_plan",
            "application_name": application_name,
        },
    )


def library_datastore(dsn: str, schema: str, **options):
    """The eventsourcing library's PostgresDatastore for the same database as `dsn`, for
    comparing with (and reading through) the library's own recorders."""
    from urllib.parse import parse_qs, urlsplit

    from eventsourcing.postgres import PostgresDatastore  # needs the dev extra (psycopg)

    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    return PostgresDatastore(
        dbname=parts.path.lstrip("/"),
        host=query.get("host", [parts.hostname or "127.0.0.1"])[0],
        port=str(parts.port or 5432),
        user=parts.username or "postgres",
        password=parts.password or "",
        schema=schema,
        **options,
    )
