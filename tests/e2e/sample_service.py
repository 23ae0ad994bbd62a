"""A minimal service on the chassis, for testing the local runner: its own event store
schema and the event feed. `python -m tests.e2e.sample_service --port N`."""

from __future__ import annotations

import argparse
import asyncio
import os

from google.protobuf import wrappers_pb2

from libs.chassis.auth import AccessPolicy, TokenVerifier, load_secret
from libs.chassis.feed import EventFeedServicer, TranslatedEvent
from libs.chassis.server import Server, serve_until_signalled
from libs.eventstore import EventStore, create_pool


def translate(recorded):
    return TranslatedEvent(
        event_type=recorded.topic,
        occurred_at=recorded.recorded_at,
        payload=wrappers_pb2.BytesValue(value=recorded.state),
    )


async def main(port: int) -> None:
    pool = await create_pool(os.environ["DATABASE_URL"])
    store = EventStore(pool, "sample")
    await store.create_schema()
    server = Server(
        "sample",
        [],
        verifier=TokenVerifier(load_secret()),
        policy=AccessPolicy({"/throughline.feed.v1.EventFeedService/": frozenset({"feed.read"})}),
        feed=EventFeedServicer(store, translate),
    )
    try:
        await serve_until_signalled(server, f"127.0.0.1:{port}", grace=2)
    finally:
        await store.close()
        await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
