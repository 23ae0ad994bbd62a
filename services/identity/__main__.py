"""Runs the identity service: python -m services.identity --port 50051"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from libs.chassis.auth import TokenVerifier, load_secret
from libs.chassis.server import serve_until_signalled
from libs.eventstore import KeyRingError, UnreadableStoreError, create_pool
from services.identity.bootstrap import bootstrap
from services.identity.grpc_api import build_server


async def main(port: int) -> None:
    pool = await create_pool(
        os.environ["DATABASE_URL"], max_size=20, application_name="throughline-identity"
    )
    identity = await bootstrap(pool)
    identity.start_projection()
    server = build_server(identity, TokenVerifier(load_secret()))
    try:
        await serve_until_signalled(server, f"127.0.0.1:{port}")
    finally:
        await identity.close()
        await pool.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description="The Throughline identity service.")
    parser.add_argument("--port", type=int, default=50051)
    port = parser.parse_args().port
    try:
        asyncio.run(main(port))
    except (KeyRingError, UnreadableStoreError) as error:
        # Misconfigured keys: say which variable, and do not start.
        logging.getLogger("services.identity").error("not starting: %s", error)
        sys.exit(2)
