"""Operators' tools for the identity store: audit replay and serious case review.

    python -m services.identity.admin status
        Where the store and the search index have got to, and how many people, merged
        records and identifiers the index holds.
    python -m services.identity.admin access-log PERSON [--since 2026-11-01T00:00:00Z]
        Who consulted the person's record, and when: each lookup, history, search,
        duplicate check and feed message that showed the person's details or asked for
        them (PERSON a person id), or that asked for an identifier (PERSON as
        TYPE:VALUE), with what was asked and whose details the answer showed.
    python -m services.identity.admin access-log --by SUBJECT [--since ...]
        Everything one caller (a token subject, or operator:<login>) consulted.
    python -m services.identity.admin retire-access-log --before 2020-01 [--yes]
        The access log is kept by the month. Lists each month it holds; with --yes,
        drops the months before the one given, as a retention period agreed with the
        data protection officer requires. Single entries are never deleted.
    python -m services.identity.admin audit
        Checks every event: positions gapless up to the head, recording times in order,
        every stream's hash chain intact.
    python -m services.identity.admin keys
        Which cipher key each event needs: for the current key and every old one, how
        many events it encrypted and their first and last positions; and the events no
        key given reads (exit status 1). Run it before removing a key from
        THROUGHLINE_CIPHER_OLD_KEYS: a key that encrypted any event is needed for good.
    python -m services.identity.admin verify-index
        Rebuilds the search index from the events beside the live one, while the service
        runs, and compares the two row by row.
    python -m services.identity.admin rebuild-index --yes
        Empties the search index and applies every event to it again, beside the running
        service (whichever records a batch first applies it). Until it finishes, searches
        see part of the record: run it when verify-index finds the index wrong.
    python -m services.identity.admin history PERSON [--known-at 2026-11-01T09:00:00Z]
        A person's record as it was known at that moment (default: now): each event
        recorded by then, with when it happened, when and by whom it was recorded, and
        the person those events made. PERSON is a person id, or an identifier as
        TYPE:VALUE (NOMS:A1234AA, PNC:12/394773H): whoever held it at that moment.
    python -m services.identity.admin search --family-name Smith --date-of-birth 1980-05-17
            [--given-names G] [--identifier TYPE:VALUE ...] [--known-at T]
        The candidates a search would find now or, with --known-at, would have found
        then: the search index is rebuilt from the events recorded by then, beside the
        live one, and dropped after. Scores use today's matching rules.

DATABASE_URL names the database (`make db-url` prints the development one);
THROUGHLINE_CIPHER_KEY the key events are encrypted with, if any, and
THROUGHLINE_CIPHER_OLD_KEYS (comma-separated) the keys used before a rotation. What an
operator is shown is written to the access log under operator:<login>; nothing else is
written to the service's tables except by rebuild-index (verify-index and search
--known-at work in a scratch schema of their own). Exit status: 0 when all is well, 1 when
the audit finds a problem, the index differs, the person is unknown or an event is
readable with none of the keys given, 2 for a bad command line or a malformed key.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import secrets
import sys
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

import asyncpg

from libs.console import Progress, table
from libs.domain.errors import InvalidFieldError, NotFoundError
from libs.eventstore import UnreadableStoreError, audit_store, check_readable, create_pool
from libs.eventstore.context import Actor, current_actor, current_trace_id
from libs.eventstore.keyring import UNENCRYPTED, KeyRingError, key_usage
from libs.eventstore.recorder import quote_schema
from services.identity.application import PersonHistory
from services.identity.bootstrap import SCHEMA, Identity, connect
from services.identity.domain import Name
from services.identity.identifiers import (
    Identifier,
    IdentifierType,
    InvalidIdentifier,
    parse_identifier,
)


class UsageError(Exception):
    pass


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.identity.admin",
        description="Audit replay and serious case review for the identity store.",
    )
    parser.add_argument("--schema", default=SCHEMA, help="the service's schema (identity)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="the store's head, the index's position and counts")
    commands.add_parser("audit", help="check positions, recording times and hash chains")
    access = commands.add_parser("access-log", help="who consulted a person's record, and when")
    whose = access.add_mutually_exclusive_group(required=True)
    whose.add_argument(
        "person", nargs="?", type=person_key, help="a person id, or an identifier as TYPE:VALUE"
    )
    whose.add_argument("--by", metavar="SUBJECT", help="what one caller consulted instead")
    access.add_argument("--since", type=moment, help="an ISO 8601 time with its zone")
    retire = commands.add_parser(
        "retire-access-log", help="list the access log's months; drop those before one"
    )
    retire.add_argument("--before", type=month_argument, required=True, metavar="YYYY-MM")
    retire.add_argument("--yes", action="store_true", help="drop them (without: only list)")
    commands.add_parser("keys", help="which cipher key each event needs; any unreadable")
    commands.add_parser("verify-index", help="rebuild the search index and compare")
    rebuild = commands.add_parser("rebuild-index", help="empty the search index and refill it")
    rebuild.add_argument(
        "--yes", action="store_true", help="searches see part of the record until it ends"
    )
    history = commands.add_parser("history", help="a person's record as known at a moment")
    history.add_argument(
        "person", type=person_key, help="a person id, or an identifier as TYPE:VALUE"
    )
    history.add_argument(
        "--known-at",
        type=moment,
        help="an ISO 8601 time with its zone, e.g. 2026-11-01T09:00:00Z (default: now)",
    )
    search = commands.add_parser("search", help="what a search made at a moment would have found")
    search.add_argument("--given-names", default="")
    search.add_argument("--family-name", default="")
    search.add_argument("--date-of-birth", type=date_argument, help="YYYY-MM-DD")
    search.add_argument(
        "--identifier",
        type=identifier_argument,
        action="append",
        default=[],
        help="TYPE:VALUE, e.g. PNC:12/394773H (may be given more than once)",
    )
    search.add_argument("--limit", type=int, default=10, choices=range(1, 101), metavar="1-100")
    search.add_argument(
        "--known-at",
        type=moment,
        help="search the index as it stood then, rebuilt from the events (default: now)",
    )
    arguments = parser.parse_args(argv)
    if arguments.command == "search" and not (
        arguments.given_names.strip()
        or arguments.family_name.strip()
        or arguments.date_of_birth
        or arguments.identifier
    ):
        parser.error("search needs a name, a date of birth or an identifier")
    return arguments


def person_key(text: str) -> UUID | Identifier:
    try:
        return UUID(text)
    except ValueError:
        pass
    if ":" not in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a person id nor an identifier as TYPE:VALUE "
            f"(types: {', '.join(t.value for t in IdentifierType)})"
        )
    return identifier_argument(text)


def identifier_argument(text: str) -> Identifier:
    kind, separator, value = text.partition(":")
    if not separator:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an identifier as TYPE:VALUE "
            f"(types: {', '.join(t.value for t in IdentifierType)})"
        )
    try:
        return parse_identifier(kind.strip().upper(), value)
    except InvalidIdentifier as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None


def month_argument(text: str) -> date:
    try:
        return date.fromisoformat(f"{text}-01")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a month as YYYY-MM") from None


def date_argument(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date as YYYY-MM-DD") from None


def moment(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no time zone: add one, e.g. {text}Z for UTC"
        )
    return value


async def run(arguments: argparse.Namespace, database_url: str) -> int:
    # What an operator looks at is logged like any other consultation, under their login
    # and one trace id for the run.
    current_actor.set(Actor(f"operator:{getpass.getuser()}"))
    current_trace_id.set(secrets.token_hex(16))
    pool = await create_pool(database_url, min_size=1, max_size=4)
    try:
        stored = f"{quote_schema(arguments.schema)}.stored_events"
        if await pool.fetchval("SELECT to_regclass($1)", stored) is None:
            raise UsageError(f"there is no identity store in schema {arguments.schema!r}")
        identity = connect(pool, schema=arguments.schema)
        if arguments.command == "audit":
            return await audit(identity)  # hashes what is stored: needs no cipher key
        if arguments.command == "status":
            return await status(identity)  # reads positions and counts: no key either
        if arguments.command == "access-log":
            return await access_log(identity, arguments.person or arguments.by, arguments.since)
        if arguments.command == "retire-access-log":
            return await retire_access_log(identity, arguments.before, drop=arguments.yes)
        if arguments.command == "keys":
            return await keys(identity)  # reports the events the keys do not read
        try:
            await check_readable(identity.store, identity.mapper)
        except UnreadableStoreError as error:
            raise UsageError(str(error)) from None
        if arguments.command == "verify-index":
            return await verify_index(identity)
        if arguments.command == "rebuild-index":
            if not arguments.yes:
                raise UsageError(
                    "rebuild-index empties the search index first: until it finishes, "
                    "searches see part of the record. Add --yes to go ahead."
                )
            return await rebuild_index(identity)
        if arguments.command == "search":
            return await search(identity, arguments)
        return await history(identity, arguments.person, arguments.known_at)
    finally:
        await pool.close()


async def audit(identity: Identity) -> int:
    report = await audit_store(identity.store, progress=Progress("events checked"))
    result = "intact" if report.intact else f"{len(report.problems):,} problems"
    print(
        table(
            ["store", "events", "streams", "head position", "result"],
            [
                [
                    identity.store.schema,
                    report.events_checked,
                    report.streams_checked,
                    report.head_position,
                    result,
                ]
            ],
        )
    )
    if report.problems:
        print()
        print(table(["problem"], [[problem] for problem in report.problems]))
    return 0 if report.intact else 1


async def status(identity: Identity) -> int:
    found = await identity.application.status()
    newest = found.newest_recorded_at
    behind = found.index_behind
    print(
        table(
            ["", "value"],
            [
                ["store", identity.store.schema],
                ["newest event", f"position {found.head_position:,}"],
                ["newest event recorded (UTC)", utc(newest) if newest else "none yet"],
                [
                    "search index",
                    f"position {found.index_position:,} "
                    + ("(up to date)" if behind == 0 else f"({behind:,} events behind)"),
                ],
                ["people", f"{found.index.active_people:,}"],
                ["merged records (redirects)", f"{found.index.merged_people:,}"],
                ["identifiers held", f"{found.index.identifiers:,}"],
            ],
        )
    )
    return 0


async def keys(identity: Identity) -> int:
    usage = await key_usage(identity.store, identity.mapper, progress=Progress("events read"))
    rows: list[list[Any]] = []
    for n, use in enumerate(usage.keys):
        role = "no key set" if use.key == UNENCRYPTED else "current" if n == 0 else f"old {n}"
        where = f"{use.first_position:,}..{use.last_position:,}" if use.events else "no events"
        rows.append([use.key, role, use.events, where])
    if usage.unreadable:
        examples = ", ".join(f"{p:,}" for p in usage.unreadable_examples)
        more = "" if usage.unreadable == len(usage.unreadable_examples) else ", ..."
        rows.append(["", "read by none", usage.unreadable, f"{examples}{more}"])
    print(f"{identity.store.schema}: {usage.head_position:,} events")
    print(table(["key", "use", "events", "positions"], rows))
    return 0 if usage.readable else 1


async def access_log(
    identity: Identity, key: UUID | Identifier | str, since: datetime | None
) -> int:
    """Consultations of a person (id) or an identifier, or by a caller (token subject)."""
    log = identity.application.access_log
    if isinstance(key, Identifier):
        found, heading = await log.of_identifier(str(key), since=since), f"of {key}"
    elif isinstance(key, UUID):
        found, heading = await log.of_person(key, since=since), f"of {key}"
    else:
        found, heading = await log.by_actor(key, since=since), f"by {key}"
    print(f"Consultations {heading}" + (f" since {utc(since)} UTC" if since else "") + ":")
    if not found:
        print("None recorded.")
        return 0
    print(
        table(
            ["at (UTC)", "by", "action", "asked", "shown", "trace id"],
            [
                [
                    utc(a.at),
                    a.actor,
                    a.action,
                    describe(a.asked),
                    ", ".join(map(str, a.disclosed)) or "nobody",
                    a.trace_id,
                ]
                for a in found
            ],
        )
    )
    return 0


async def retire_access_log(identity: Identity, before: date, *, drop: bool) -> int:
    log = identity.application.access_log
    months = await log.months()
    print(
        table(
            ["month", "entries", ""],
            [
                [m.strftime("%Y-%m"), count, "to retire" if m < before else "kept"]
                for m, count in months
            ],
        )
    )
    if not drop:
        print(f"\nNothing dropped: add --yes to drop the months before {before:%Y-%m}.")
        return 0
    try:
        retired = await log.retire_before(before)
    except ValueError as error:
        raise UsageError(str(error)) from None
    dropped = ", ".join(f"{m:%Y-%m} ({count:,} entries)" for m, count in retired)
    print(f"\nDropped {dropped}." if retired else f"\nNothing held before {before:%Y-%m}.")
    return 0


async def verify_index(identity: Identity) -> int:
    check = await identity.application.verify_search_index(progress=Progress("events applied"))
    print(
        f"The search index ({check.projection}) as it stood at position {check.position:,}, "
        f"against one rebuilt from the events up to there:"
    )
    print(
        table(
            ["table", "live rows", "rebuilt rows", "only live", "only rebuilt", "result"],
            [
                [
                    t.table,
                    t.live_rows,
                    t.rebuilt_rows,
                    t.only_live,
                    t.only_rebuilt,
                    "matches" if t.matches else "DIFFERS",
                ]
                for t in check.tables
            ],
        )
    )
    examples = [
        [t.table, side, row]
        for t in check.tables
        for side, rows in (("live", t.only_live_examples), ("rebuilt", t.only_rebuilt_examples))
        for row in rows
    ]
    if examples:
        print("\nRows found on one side only (examples):")
        print(table(["table", "only in", "row"], examples))
    if check.dropped_leftovers:
        print(
            "\nDropped the scratch schemas of verifications that were stopped before they "
            f"finished: {', '.join(check.dropped_leftovers)}"
        )
    return 0 if check.matches else 1


async def rebuild_index(identity: Identity) -> int:
    started = time.monotonic()
    position = await identity.projection.rebuild(progress=Progress("events applied"))
    print(
        table(
            ["projection", "rebuilt to position", "seconds"],
            [[identity.projection.projection.name, position, time.monotonic() - started]],
        )
    )
    return 0


async def history(identity: Identity, person: UUID | Identifier, known_at: datetime | None) -> int:
    application = identity.application
    try:
        if isinstance(person, Identifier):
            person_id = await application.holder_of(person, known_at=known_at)
            when = "now" if known_at is None else f"at {utc(known_at)} UTC"
            print(f"{person} was held by {person_id} {when}.")
        else:
            person_id = person
        found = await application.person_history(person_id, known_at=known_at)
    except NotFoundError as error:
        print(error, file=sys.stderr)
        return 1
    print(render_history(found))
    return 0


async def search(identity: Identity, arguments: argparse.Namespace) -> int:
    given, family = arguments.given_names.strip(), arguments.family_name.strip()
    criteria: dict[str, Any] = {
        "names": [Name(given, family)] if given or family else [],
        "date_of_birth": arguments.date_of_birth,
        "identifiers": arguments.identifier,
        "limit": arguments.limit,
    }
    application = identity.application
    try:
        if arguments.known_at is None:
            found = await application.search_people(**criteria)
        else:
            position, found = await application.search_people_as_known_at(
                arguments.known_at, progress=Progress("events applied"), **criteria
            )
    except InvalidFieldError as error:
        raise UsageError(f"search: {error}") from None
    if arguments.known_at is None:
        print("Searched the live index (now):")
    else:
        print(
            f"Searched the index as it stood at {utc(arguments.known_at)} UTC: rebuilt "
            f"from the events up to position {position:,}, the last recorded by then, "
            f"and scored by today's matching rules."
        )
    if found.candidates:
        print(
            table(
                ["person", "name", "date of birth", "score", "why"],
                [
                    [
                        c.person_id,
                        f"{c.given_names} {c.family_name}",
                        c.date_of_birth.isoformat(),
                        f"{c.match.score:.2f}",
                        "; ".join(c.match.reasons),
                    ]
                    for c in found.candidates
                ],
            )
        )
    else:
        print("No candidates.")
    if found.incomplete:
        print(
            "More people share a blocking key than a search reads: some who match may be "
            "missing. Narrow the search (the other name, a date of birth, an identifier)."
        )
    return 0


def render_history(found: PersonHistory) -> str:
    when = "now" if found.known_at is None else f"at {utc(found.known_at)} UTC"
    heading = f"Person {found.person_id} as known {when}"
    if found.later == 1:
        heading += " (1 event recorded since is not shown)"
    elif found.later:
        heading += f" ({found.later:,} events recorded since are not shown)"
    lines = [heading]
    if found.person is None:
        lines.append("Not on the record yet: the first event was recorded later.")
        return "\n".join(lines)
    lines.append(
        table(
            ["position", "version", "occurred (UTC)", "recorded (UTC)", "by", "event", "facts"],
            [
                [
                    e.position,
                    e.version,
                    utc(e.occurred_at),
                    utc(e.recorded_at),
                    e.actor,
                    e.event,
                    describe(e.facts),
                ]
                for e in found.entries
            ],
        )
    )
    person = found.person
    lines += [
        "",
        f"The record {when}:",
        table(
            ["field", "value"],
            [
                ["name", str_name(person.name)],
                ["date of birth", person.date_of_birth.isoformat()],
                ["sex", person.sex.value],
                ["identifiers", ", ".join(map(str, sorted(person.identifiers))) or "none"],
                ["aliases", ", ".join(map(str_name, person.aliases)) or "none"],
                [
                    "date of death",
                    person.date_of_death.isoformat() if person.date_of_death else "none",
                ],
                ["status", person.status.value],
                ["merged into", person.merged_into or ""],
                ["marked not the same as", ", ".join(map(str, sorted(person.not_duplicates)))],
                ["version", person.version],
            ],
        ),
    ]
    return "\n".join(lines)


def utc(moment_: datetime) -> str:
    return moment_.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def str_name(name: Name) -> str:
    return f"{name.given_names} {name.family_name}"


def describe(facts: dict[str, Any]) -> str:
    """An event's facts as `key: value` pairs, names and identifiers written out."""
    return "; ".join(f"{key.replace('_', ' ')}: {_fact(value)}" for key, value in facts.items())


def _fact(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"given_names", "family_name"}:
        return str_name(Name.from_dict(value))
    if _is_identifier(value):
        return str(Identifier(IdentifierType(value[0]), value[1]))
    if isinstance(value, list | tuple):
        return ", ".join(_fact(item) for item in value) if value else "none"
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, date):
        return value.isoformat()
    if value is None:
        return "none"
    return str(value)


def _is_identifier(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(part, str) for part in value)
        and value[0] in _IDENTIFIER_TYPES
    )


_IDENTIFIER_TYPES = frozenset(t.value for t in IdentifierType)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        print("set DATABASE_URL (`make db-url` prints the development one)", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(arguments, database_url))
    except (UsageError, KeyRingError) as error:
        print(error, file=sys.stderr)
        return 2
    except (OSError, asyncpg.PostgresError) as error:
        print(f"could not read the identity store: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
