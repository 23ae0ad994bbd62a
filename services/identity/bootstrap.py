"""The identity service's composition root: wires the store, repository, search index
projection and application together over one pool and schema."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from eventsourcing.persistence import Mapper

from libs.eventstore import (
    AccessLog,
    AdaptiveWindow,
    EventStore,
    ProjectionRunner,
    Repository,
    TrackingStore,
    check_readable,
    create_access_log,
    create_mapper,
    create_schema,
)
from services.identity.application import IdentityApplication
from services.identity.search_index import SearchIndex, create_search_index

SCHEMA = "identity"
# Under steady registrations the search index gathers up to 50 ms of events per batch
# rather than a few people at a time. Measured against 5 ms on a small index (four runs
# each, 16 clients): machine CPU per RegisterPerson 1.48 ms instead of 1.79, PostgreSQL's
# share 0.25 instead of 0.38, and RegisterPerson 0.33 of echo instead of 0.26. A search
# that asks for its min_position does not wait for the interval: its waiting wakes the
# index at once. Other searches may see the index up to about 50 ms behind under load.
BATCH_INTERVAL = 0.05
# Under concurrent commands, the event store starts write transactions at least a window
# apart, so each gathers more commands (a lone command is written at once), at the cost of
# up to a window more latency per command. Against writing whatever was queued (16
# RegisterPerson clients): groups of about 8 commands instead of 2-3, PostgreSQL's CPU per
# command 0.08-0.10 ms instead of 0.20, RegisterPerson 0.33 of echo instead of 0.25. The
# window also caps throughput: each caller waits for its command's group, so 16 callers
# make at most 16 commands per window (3,200/s at 5 ms). The best window depends on the
# machine: 5 ms on two serving 1,000-1,800 commands/s (against 4, 6 and 8 ms), 3-4 ms on
# one serving 2,400-2,700/s, where 5 ms left the event loop idle a fifth of the time
# (`make bench-identity-tuning ARGS='--windows 3,4,5,auto'`). A few concurrent callers
# feel a fixed window most: 4 callers made 725 commands/s at 5 ms (5.5 ms each). So the
# window starts at 5 ms and adapts to keep the event loop busy, first between 1 and 5 ms
# (`libs.eventstore.window`): 0.37 of echo with 16 callers, as the best fixed window did
# (against 0.34 at 5 ms), and 1,463 commands/s with 4 (2.7 ms each; the window at 1 ms).
# Capped at 8 ms, on a machine whose two cores were both saturated (register_vs_echo's
# CPU ceiling 0.33), the window climbed to 7 ms and the loop idled: 1,920 commands/s
# (0.27 of echo) against 2,125 (0.30) capped at 5 ms, four alternating rounds each. With
# the same machine half as fast, the cap made no difference (943 against 948/s). But on
# a machine running Python slower still (500-700 commands/s), groups at 5 ms held only
# 3-4 commands; fixed windows of 8 and 12 ms served 6% and 11% more than the window
# capped at 5 ms, and in another run 12 ms served 29% more than a fixed 5 ms (three
# alternating rounds each). So the window may grow to 15 ms, but only while groups
# average fewer than 8 commands (`WRITE_GROUP_FILL`): past that a group's cost is spread
# thinly and a longer window only makes callers wait. It shrinks while they average more
# than 16, however busy the loop, so a window grown while the machine was slow comes
# down when it speeds up. On the saturated machine it would not have grown past 5 ms:
# groups start at least a window apart, so at 2,125/s they averaged over 10. On the slow
# machine it ended at 12.7 ms with 7.9 commands per write, 0.35 of echo as fixed at 12
# ms (0.35; four alternating rounds); capped at 5 ms it had made 0.30. With 8 callers it
# ended at 7 ms, as good as 5 ms (0.26) and better than 2 ms (0.24); with 4 it shrank to
# 2 ms.
WRITE_WINDOW = 0.005
WRITE_WINDOW_LEAST, WRITE_WINDOW_MOST = 0.001, 0.015
WRITE_GROUP_FILL = 8
# Under steady writes the store sends at most one NOTIFY per 50 ms (the library's default
# is 5 ms): subscribers in other processes (another replica's feed or search index) learn
# of new events up to 50 ms later, while a write after a quiet spell is announced at once
# and this process's own subscribers are woken directly. Each NOTIFY is a statement on a
# pooled connection and a notification back to this process's own LISTEN connection.
# Measured with `make bench-identity-tuning ARGS='--windows 4,6,8 --notify 5,50
# --rounds 5'`, with a 4 ms window: RegisterPerson 0.40 of echo instead of 0.36, server
# CPU per command 1.08 ms instead of 1.21, PostgreSQL's 0.22 instead of 0.27.
NOTIFY_INTERVAL = 0.05


def write_window() -> AdaptiveWindow:
    """The adaptive window each identity store is served with (a new one per store)."""
    return AdaptiveWindow(WRITE_WINDOW_LEAST, WRITE_WINDOW_MOST, fill=WRITE_GROUP_FILL)


@dataclass
class Identity:
    store: EventStore
    mapper: Mapper
    application: IdentityApplication
    projection: ProjectionRunner
    _task: asyncio.Task[None] | None = None

    def start_projection(self) -> None:
        self._task = asyncio.create_task(self.projection.run(), name="identity-search-index")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.store.close()


async def bootstrap(
    pool: asyncpg.Pool,
    *,
    schema: str = SCHEMA,
    cipher_key: str | None = None,
    old_cipher_keys: Sequence[str] | None = None,
) -> Identity:
    """Creates (or brings up to date) the service's tables, then wires it, refusing
    cipher keys its events cannot be read with (`UnreadableStoreError`). The keys
    default to the environment's (see `create_mapper`)."""
    async with pool.acquire() as conn:
        await create_schema(conn, schema)
        await create_search_index(conn, schema)
        await create_access_log(conn, schema)
    identity = connect(pool, schema=schema, cipher_key=cipher_key, old_cipher_keys=old_cipher_keys)
    await check_readable(identity.store, identity.mapper)
    return identity


def connect(
    pool: asyncpg.Pool,
    *,
    schema: str = SCHEMA,
    cipher_key: str | None = None,
    old_cipher_keys: Sequence[str] | None = None,
) -> Identity:
    """Wires the service over tables that already exist, changing nothing in the
    database (for operators' tools)."""
    store = EventStore(
        pool,
        schema,
        batch_window=WRITE_WINDOW,
        adapt_window=write_window(),
        notify_interval=NOTIFY_INTERVAL,
    )
    mapper = create_mapper(cipher_key, old_cipher_keys)
    # People and claims have short streams: rebuilding from events beats a snapshot read.
    repository = Repository(store, mapper, snapshots=False)
    tracking = TrackingStore(pool, schema)
    index = SearchIndex(pool, schema, mapper, repository)
    application = IdentityApplication(
        store, repository, index, tracking, access_log=AccessLog(pool, schema)
    )
    projection = ProjectionRunner(
        index, store, tracking, upstream=schema, batch_interval=BATCH_INTERVAL
    )
    return Identity(store, mapper, application, projection)
