"""Tries settings of the identity service's event store under RegisterPerson load
(`make bench-identity-tuning`). Not a test: it prints figures, ending with `name=value`
lines.

    python -m bench.identity_tuning [--windows 3,5,auto] [--notify 5,50] [--rounds 4]
                                    [--clients 16] [--people 0]

Without --notify, every setting uses the notify interval the service is served with;
`auto` is the adaptive window it is served with (`libs.eventstore.window`).

One identity service as served (the search index following the store, over an index that
starts empty, or with --people synthetic people loaded first as `bench.identity` loads
its million) takes RegisterPerson from 16 clients (or --clients) in another process, as
in `bench.identity`, under each pair of write window (`EventStore.batch_window`, ms) and
notify interval (`EventStore.notify_interval`, ms) given. Each round runs every setting
once, each as an echo baseline followed by RegisterPerson, and starts one setting later
than the round before, so that the machine's drift over minutes favours none. Per
setting: RegisterPerson over echo (mean rates, and the lowest and highest round), the
window each load ended at (for `auto`, the mean), commands per write transaction, server
and PostgreSQL CPU per command, and how much of the time the server's event loop was on
a CPU and waiting for one.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import statistics
from dataclasses import dataclass

from bench.identity import (
    CLIENTS,
    SECRET,
    Alternation,
    Load,
    bench_echo,
    load,
    load_from_another_process,
    progress,
)
from infra.postgres import scratch_database
from libs.chassis.auth import TokenVerifier
from libs.eventstore import create_mapper, create_pool
from services.identity.bootstrap import NOTIFY_INTERVAL, WRITE_WINDOW, bootstrap, write_window
from services.identity.grpc_api import identity_server
from services.identity.synthetic import population
from services.identity.translate import event_translator


@dataclass(frozen=True)
class Setting:
    window_ms: float | None  # None: the adaptive window the service is served with
    notify_ms: float

    @property
    def window(self) -> str:
        return "auto" if self.window_ms is None else f"{self.window_ms:g}"

    @property
    def name(self) -> str:
        unit = "" if self.window_ms is None else "ms"
        return f"window_{self.window}{unit}_notify_{self.notify_ms:g}ms"


@dataclass
class Outcome:
    alternation: Alternation
    commands_per_write: float
    window_ms: float  # the mean window at the end of each RegisterPerson load


def ms_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of milliseconds: {text!r}") from None
    if not values or any(value < 0 for value in values):
        raise argparse.ArgumentTypeError(f"give one or more milliseconds, none below 0: {text!r}")
    return values


def windows_list(text: str) -> list[float | None]:
    """Milliseconds, and `auto` for the adaptive window."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    auto: list[float | None] = [None] if "auto" in parts else []
    fixed = [part for part in parts if part != "auto"]
    # ms_list refuses an empty list: only `auto` alone may have no milliseconds.
    return [*(ms_list(",".join(fixed)) if fixed or not auto else []), *auto]


async def run(
    dsn: str, settings: list[Setting], rounds: int, clients: int, people: int = 0
) -> dict[Setting, Outcome]:
    verifier = TokenVerifier(SECRET)
    token = verifier.mint("bench", ["identity.write"])
    translate = event_translator(create_mapper(cipher_key=""))
    pool = await create_pool(dsn, min_size=4, max_size=24)
    try:
        identity = await bootstrap(pool, schema="bench_tuning", cipher_key="")
        if people:
            progress(f"loading {people:,} synthetic people")
            await load(identity, population(people, seed=3))
            gc.collect()  # the population is dropped: its objects would slow every collection
        identity.start_projection()
        store = identity.store
        server = identity_server(identity.application, verifier, translate)
        port = await server.start()
        echoes: dict[Setting, list[Load]] = {setting: [] for setting in settings}
        registers: dict[Setting, list[Load]] = {setting: [] for setting in settings}
        groups = dict.fromkeys(settings, 0)
        grouped = dict.fromkeys(settings, 0)
        windows: dict[Setting, list[float]] = {setting: [] for setting in settings}
        first = itertools.count(70_000_000, 1_000_000)  # NOMS numbers never repeat
        try:
            for round_ in range(rounds):
                start = round_ % len(settings)
                for setting in settings[start:] + settings[:start]:
                    if setting.window_ms is None:
                        store.batch_window, store.adapt_window = WRITE_WINDOW, write_window()
                    else:
                        store.batch_window, store.adapt_window = setting.window_ms / 1000, None
                    store.notify_interval = setting.notify_ms / 1000
                    progress(f"round {round_ + 1}/{rounds}: {setting.name}, echo then register")
                    echoes[setting].append(await bench_echo(clients))
                    groups_before, grouped_before = store.groups, store.grouped_appends
                    registers[setting].append(
                        await load_from_another_process(
                            port, "register", token, first=next(first), clients=clients
                        )
                    )
                    groups[setting] += store.groups - groups_before
                    grouped[setting] += store.grouped_appends - grouped_before
                    windows[setting].append(store.batch_window * 1000)
        finally:
            await server.stop(1)
            await identity.close()
    finally:
        await pool.close()
    return {
        setting: Outcome(
            Alternation.of(echoes[setting], registers[setting]),
            grouped[setting] / groups[setting] if groups[setting] else 0.0,
            statistics.fmean(windows[setting]),
        )
        for setting in settings
    }


def report(outcomes: dict[Setting, Outcome], rounds: int, clients: int, people: int = 0) -> None:
    print(
        f"\nRegisterPerson under each store setting — {clients} clients, {rounds} rounds, "
        f"{people:,} people loaded first, "
        f"{os.cpu_count()} cores (served with an adaptive window starting at "
        f"{WRITE_WINDOW * 1000:g} ms, "
        f"notifying every {NOTIFY_INTERVAL * 1000:g} ms at most)"
    )
    print(
        f"{'window ms':>10}{'ended at':>9}{'notify ms':>11}{'commands/s':>12}{'of echo':>9}"
        f"{'rounds':>12}"
        f"{'commands/write':>16}{'server CPU/call':>17}{'PostgreSQL CPU/call':>21}"
        f"{'loop on CPU':>13}{'loop waiting':>14}"
    )
    for setting, outcome in outcomes.items():
        alternation = outcome.alternation
        register = alternation.register
        database = f"{register.database_cpu_ms:.3f}" if register.database_cpu_ms else "-"
        waiting = "-" if register.loop_runnable is None else f"{register.loop_runnable:.0%}"
        print(
            f"{setting.window:>10}{outcome.window_ms:>9.1f}{setting.notify_ms:>11g}{register.rate:>12,.0f}"
            f"{alternation.ratio:>9.2f}{alternation.spread:>12}{outcome.commands_per_write:>16.1f}"
            f"{register.server_cpu_ms:>17.3f}{database:>21}"
            f"{register.loop_busy:>13.0%}{waiting:>14}"
        )
    print()
    for setting, outcome in outcomes.items():
        print(f"{setting.name}_vs_echo={outcome.alternation.ratio:.2f}")
        print(f"{setting.name}_commands_per_write={outcome.commands_per_write:.1f}")


async def main(settings: list[Setting], rounds: int, clients: int, people: int) -> None:
    async with scratch_database("throughline_bench_tuning") as dsn:
        report(await run(dsn, settings, rounds, clients, people), rounds, clients, people)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=windows_list, default=[3.0, 5.0, None])
    parser.add_argument("--notify", type=ms_list, default=[NOTIFY_INTERVAL * 1000])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--people", type=int, default=0)
    args = parser.parse_args()
    if args.rounds < 1 or args.clients < 1:
        parser.error("--rounds and --clients must be at least 1")
    if args.people < 0:
        parser.error("--people must not be negative")
    asyncio.run(
        main(
            [Setting(window, notify) for window in args.windows for notify in args.notify],
            args.rounds,
            args.clients,
            args.people,
        )
    )
