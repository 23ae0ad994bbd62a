"""Where a RegisterPerson's cost goes (`make bench-identity-stages`). Not a test: it prints
figures, ending with `name=value` lines.

RegisterPerson is driven as in `bench.identity` (16 clients in another process, next to
the echo baseline, alternating, in the same run) through the same gRPC server, chassis
and servicer, with less behind the servicer at each stage:

- servicer: validation and translation; the application answers at once;
- application: the real application and aggregates, over an event store that keeps
  events in a list (no database);
- store: the real event store on PostgreSQL, the search index not running;
- full: as served, with the search index following the store.

The difference between two stages is what the later one adds per command.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from bench.identity import CLIENTS, SECRET, Alternation, register_next_to_echo
from infra.postgres import scratch_database
from libs.chassis.auth import TokenVerifier
from libs.chassis.server import Server
from libs.eventstore import AppendResult, Repository, StreamHead, create_mapper, create_pool
from services.identity.application import IdentityApplication, Written
from services.identity.bootstrap import bootstrap
from services.identity.grpc_api import identity_server
from services.identity.translate import event_translator


class AnswerAtOnce:
    """An application that does nothing: what the servicer and gRPC cost on their own."""

    async def register_person(self, command_id: UUID, *args: Any) -> Written:
        return Written(command_id, 0, duplicate=False)


class EventList:
    """An event store that appends to a list: what the application costs without the
    database. Only what RegisterPerson uses."""

    schema = "in_memory"

    def __init__(self) -> None:
        self.events: list[StoredEvent] = []

    async def append(self, events: Sequence[StoredEvent], **_: Any) -> AppendResult:
        first = len(self.events) + 1
        self.events.extend(events)
        return AppendResult(
            positions=tuple(range(first, len(self.events) + 1)),
            streams=tuple(StreamHead(e.originator_id, e.originator_version) for e in events),
            recorded_at=datetime.now(UTC),
        )


async def measure(stage: str, server: Server, token: str, first: int) -> Alternation:
    port = await server.start()
    try:
        return await register_next_to_echo(port, token, first=first, label=f"{stage}: ")
    finally:
        await server.stop(1)


async def run(dsn: str) -> tuple[dict[str, Alternation], dict[str, float]]:
    """Each stage's echo and RegisterPerson loads, and for the stages with a real event
    store, the mean number of commands its writer put in one transaction."""
    verifier = TokenVerifier(SECRET)
    token = verifier.mint("bench", ["identity.write"])
    translate = event_translator(create_mapper(cipher_key=""))
    results = {}
    per_group = {}
    answer_at_once: Any = AnswerAtOnce()
    results["servicer"] = await measure(
        "servicer", identity_server(answer_at_once, verifier, translate), token, 10_000_000
    )
    events = EventList()
    in_memory = IdentityApplication(
        events,  # type: ignore[arg-type]
        Repository(events, create_mapper(cipher_key="")),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        access_log=None,  # type: ignore[arg-type]  # RegisterPerson shows no one's details
    )
    results["application"] = await measure(
        "application", identity_server(in_memory, verifier, translate), token, 20_000_000
    )
    pool = await create_pool(dsn, min_size=4, max_size=24)
    try:
        for stage, first, follow in (("store", 30_000_000, False), ("full", 40_000_000, True)):
            identity = await bootstrap(pool, schema=f"bench_stage_{stage}", cipher_key="")
            if follow:
                identity.start_projection()
            try:
                results[stage] = await measure(
                    stage, identity_server(identity.application, verifier, translate), token, first
                )
                per_group[stage] = identity.store.grouped_appends / identity.store.groups
            finally:
                await identity.close()
    finally:
        await pool.close()
    return results, per_group


def report(results: dict[str, Alternation], per_group: dict[str, float]) -> None:
    print(f"\nRegisterPerson by stage — {CLIENTS} clients, {os.cpu_count()} cores")
    header = (
        f"{'stage':<13}{'commands/s':>12}{'of echo':>9}{'rounds':>12}"
        f"{'server CPU/call':>17}{'added':>8}{'PostgreSQL CPU/call':>21}"
        f"{'commands/write':>16}"
    )
    print(header)
    previous = None
    for stage, alternation in results.items():
        register = alternation.register
        added = "" if previous is None else f"{register.server_cpu_ms - previous:+.3f}"
        database = f"{register.database_cpu_ms:.3f}" if register.database_cpu_ms else "-"
        grouped = f"{per_group[stage]:.1f}" if stage in per_group else "-"
        print(
            f"{stage:<13}{register.rate:>12,.0f}{alternation.ratio:>9.2f}{alternation.spread:>12}"
            f"{register.server_cpu_ms:>17.3f}{added:>8}{database:>21}{grouped:>16}"
        )
        previous = register.server_cpu_ms
    echo_cpu = sum(a.echo.server_cpu_ms for a in results.values()) / len(results)
    print(f"{'echo':<13}{'':>33}{echo_cpu:>17.3f}   (server CPU per echo call, mean)")
    print()
    for stage, alternation in results.items():
        print(f"{stage}_vs_echo={alternation.ratio:.2f}")
        print(f"{stage}_server_cpu_ms={alternation.register.server_cpu_ms:.3f}")
        if stage in per_group:
            print(f"{stage}_commands_per_write={per_group[stage]:.1f}")


async def main() -> None:
    async with scratch_database("throughline_bench_stages") as dsn:
        report(*await run(dsn))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(__doc__)
    asyncio.run(main())
