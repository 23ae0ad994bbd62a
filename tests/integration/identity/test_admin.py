"""Operators' tools against real PostgreSQL: a person's record as known at a past moment,
the search index proved against one rebuilt from events, and the command line."""

from __future__ import annotations

import asyncio
import getpass
import itertools
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from uuid import uuid4

import pytest
from eventsourcing.cryptography import AESCipher

from libs.domain.errors import NotFoundError
from libs.eventstore import AccessLog, EventStoreError, create_access_log
from libs.eventstore.audit import SCRATCH_LOCKS
from libs.eventstore.keyring import fingerprint
from services.identity.admin import UsageError, parse_arguments, render_history, run
from services.identity.bootstrap import bootstrap
from services.identity.domain import Name, Sex, Status
from services.identity.identifiers import parse_identifier
from services.identity.search_index import BROAD_CANDIDATE_LIMIT
from tests.conftest import new_schema_name

PNC = parse_identifier("PNC", "12/394773H")


async def test_a_record_is_shown_as_it_was_known_at_a_past_moment(identity):
    app = identity.application
    registered = await app.register_person(
        uuid4(), Name("Ann", "Example"), date(1980, 5, 17), Sex.FEMALE, [PNC], []
    )
    person_id = registered.person_id
    await app.change_name(uuid4(), person_id, Name("Ann", "Wed"), "marriage")
    await app.record_death(uuid4(), person_id, date(2026, 1, 2))
    await app.correct_death(uuid4(), person_id, None, "recorded on the wrong person")

    now = await app.person_history(person_id)
    assert now.entries[0].facts == {
        "name": {"given_names": "Ann", "family_name": "Example"},
        "date_of_birth": date(1980, 5, 17),
        "sex": "FEMALE",
        "identifiers": [["PNC", "2012/0394773H"]],
        "aliases": [],
    }
    assert [e.event for e in now.entries] == [
        "Registered",
        "NameChanged",
        "DeathRecorded",
        "DeathCorrected",
    ]
    assert now.person.date_of_death is None and now.later == 0
    death = now.entries[2]
    assert death.actor is None and death.facts == {"date_of_death": date(2026, 1, 2)}
    assert now.entries[3].facts["reason"] == "recorded on the wrong person"

    # As known just after the death was recorded: dead, under the married name.
    then = await app.person_history(person_id, known_at=death.recorded_at)
    assert [e.event for e in then.entries] == ["Registered", "NameChanged", "DeathRecorded"]
    assert then.person.date_of_death == date(2026, 1, 2)
    assert then.person.name == Name("Ann", "Wed") and then.later == 1
    shown = render_history(then)
    assert "(1 event recorded since is not shown)" in shown.splitlines()[0]
    assert ["date", "of", "death", "2026-01-02"] in [line.split() for line in shown.splitlines()]
    before = await app.person_history(
        person_id, known_at=now.entries[0].recorded_at - timedelta(microseconds=1)
    )
    assert before.entries == [] and before.person is None and before.later == 4

    with pytest.raises(NotFoundError):
        await app.person_history(uuid4())


async def test_the_search_index_is_proved_against_one_rebuilt_from_events(identity, pool):
    app = identity.application
    first = await app.register_person(
        uuid4(), Name("Ann", "Example"), date(1980, 5, 17), Sex.FEMALE, [PNC], []
    )
    second = await app.register_person(
        uuid4(), Name("Anne", "Example"), date(1980, 5, 17), Sex.FEMALE, [], []
    )
    merged = await app.merge_people(uuid4(), first.person_id, second.person_id, "same")
    await app.wait_for_index(merged.position)
    check = await app.verify_search_index()
    assert check.matches and check.position == merged.position
    counts = (await app.status()).index
    assert (counts.active_people, counts.merged_people, counts.identifiers) == (1, 1, 1)
    assert {t.table: t.live_rows for t in check.tables} == {
        "search_person": 2,
        "search_name": 2,  # the survivor's name and the alias it absorbed
        "search_identifier": 1,
    }

    schema = identity.store.schema
    await pool.execute(
        f'UPDATE "{schema}".search_person SET status = $1 WHERE person_id = $2',
        Status.MERGED.value,
        first.person_id,
    )
    check = await app.verify_search_index()
    differing = [t for t in check.tables if not t.matches]
    assert [(t.table, t.only_live, t.only_rebuilt) for t in differing] == [("search_person", 1, 1)]
    assert str(first.person_id) in differing[0].only_live_examples[0]
    # The differing rows shown hold a person's details: that is logged too.
    (shown,) = [
        a
        for a in await app.access_log.of_person(first.person_id)
        if a.action == "verify_search_index"
    ]
    assert shown.disclosed == (first.person_id,)


async def test_a_search_is_answered_as_it_would_have_been_at_a_past_moment(
    identity, pool, capsys, test_database_url
):
    """Would a search on the day have found the person already on the record? The index
    is rebuilt from the events recorded by then, searched, and dropped."""
    app = identity.application
    first = await app.register_person(
        uuid4(), Name("Ann", "Example"), date(1980, 5, 17), Sex.FEMALE, [], []
    )
    (registered,) = (await app.person_history(first.person_id)).entries
    await app.change_name(uuid4(), first.person_id, Name("Ann", "Wed"), "marriage")
    later = await app.register_person(
        uuid4(), Name("Anne", "Example"), date(1980, 5, 17), Sex.FEMALE, [], []
    )
    await app.wait_for_index(later.position)
    criteria = {"names": [Name("Anne", "Example")], "date_of_birth": date(1980, 5, 17)}

    position, then = await app.search_people_as_known_at(
        registered.recorded_at, identifiers=[], **criteria
    )
    assert position == registered.position and not then.incomplete
    before = registered.recorded_at - timedelta(microseconds=1)
    assert await identity.store.position_at(before) == registered.position - 1
    assert [(c.person_id, c.family_name) for c in then.candidates] == [(first.person_id, "Example")]
    now = (await app.search_people(identifiers=[], **criteria)).candidates
    assert [(c.person_id, c.family_name) for c in now] == [
        (later.person_id, "Example"),
        (first.person_id, "Wed"),
    ]
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE starts_with(nspname, $1)",
            f"{identity.store.schema[:40]}_scratch_",
        )
        == 0
    )

    status = await run(
        parse_arguments(
            [
                "--schema",
                identity.store.schema,
                "search",
                "--given-names",
                "Anne",
                "--family-name",
                "Example",
                "--date-of-birth",
                "1980-05-17",
                "--known-at",
                registered.recorded_at.isoformat(),
            ]
        ),
        test_database_url,
    )
    out = capsys.readouterr().out
    assert status == 0
    assert f"up to position {registered.position}, the last recorded by then" in out
    assert str(first.person_id) in out and str(later.person_id) not in out
    with pytest.raises(SystemExit):
        parse_arguments(["search", "--known-at", "2026-11-01T09:00:00Z"])  # no criteria
    given_only = ["--schema", identity.store.schema, "search", "--given-names", "Anne"]
    with pytest.raises(UsageError, match="a given name alone is too broad to search by"):
        await run(parse_arguments(given_only), test_database_url)


async def test_a_search_that_read_only_some_of_those_who_match_says_so(
    identity, test_database_url, capsys
):
    app = identity.application
    for n in range(BROAD_CANDIDATE_LIMIT + 1):
        given = f"Ann{chr(97 + n // 26)}{chr(97 + n % 26)}"
        written = await app.register_person(
            uuid4(), Name(given, "Nowak"), date(1980, 5, 17), Sex.FEMALE, [], []
        )
    await app.wait_for_index(written.position)
    arguments = ["--schema", identity.store.schema, "search", "--family-name", "Nowak"]

    assert await run(parse_arguments(arguments), test_database_url) == 0
    out = capsys.readouterr().out
    assert out.count("Nowak") == 10
    assert out.rstrip().endswith(
        "More people share a blocking key than a search reads: some who match may be "
        "missing. Narrow the search (the other name, a date of birth, an identifier)."
    )
    narrowed = [*arguments, "--given-names", "Annah", "--date-of-birth", "1980-05-17"]
    assert await run(parse_arguments(narrowed), test_database_url) == 0
    assert "More people share" not in capsys.readouterr().out


async def test_a_verification_that_was_killed_leaves_nothing_behind_for_long(identity, pool):
    """A verification stopped before it drops its scratch schema (the process killed) is
    tidied by the next; one still running is left alone."""
    schema = identity.store.schema
    killed, running = f"{schema[:40]}_scratch_0badc0de", f"{schema[:40]}_scratch_0c0ffee0"
    unrelated = f"{schema[:40]}_scratch_notmine"
    for name in (killed, running, unrelated):
        await pool.execute(f'CREATE SCHEMA "{name}"')
    holder = await pool.acquire()  # the running verification's session
    try:
        await holder.execute(f"SELECT pg_advisory_lock({SCRATCH_LOCKS}, hashtext($1))", running)
        check = await identity.application.verify_search_index()
        assert check.dropped_leftovers == (killed,)
        schemas = {
            name
            for (name,) in await pool.fetch(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)",
                f"{schema[:40]}_scratch_",
            )
        }
        # Its own scratch schema is gone too; the running one and one not of this
        # pattern are kept.
        assert schemas == {running, unrelated}
        assert check.matches
    finally:
        await holder.execute(f"SELECT pg_advisory_unlock({SCRATCH_LOCKS}, hashtext($1))", running)
        await pool.release(holder)
    # No lock is left held on the pool's connections.
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1::oid",
            SCRATCH_LOCKS,
        )
        == 0
    )
    for name in (running, unrelated):
        await pool.execute(f'DROP SCHEMA "{name}"')


async def test_the_command_line_prints_readable_tables(
    identity, pool, capsys, test_database_url, monkeypatch
):
    app = identity.application
    registered = await app.register_person(
        uuid4(), Name("Zoë", "O'Brien"), date(1980, 5, 17), Sex.FEMALE, [PNC], []
    )
    await app.wait_for_index(registered.position)
    schema = identity.store.schema

    async def command(*argv: str) -> tuple[int, str]:
        status = await run(parse_arguments(["--schema", schema, *argv]), test_database_url)
        return status, capsys.readouterr().out

    status, out = await command("status")
    assert status == 0
    rows = {line[:28].strip(): line[28:].strip() for line in out.splitlines()[2:]}
    assert rows["search index"] == f"position {registered.position:,} (up to date)"
    assert rows["people"] == "1" and rows["identifiers held"] == "1"
    assert rows["merged records (redirects)"] == "0"

    status, out = await command("history", str(registered.person_id))
    assert status == 0
    assert "Registered" in out and "PNC 2012/0394773H" in out and "Zoë O'Brien" in out
    assert out.splitlines()[1].split() == [
        "position",
        "version",
        "occurred",
        "(UTC)",
        "recorded",
        "(UTC)",
        "by",
        "event",
        "facts",
    ]
    # A reviewer may start from an identifier: whoever held it at that moment.
    status, out = await command("history", "pnc:12/394773H")
    assert status == 0
    assert out.splitlines()[0] == f"PNC 2012/0394773H was held by {registered.person_id} now."
    assert "Zoë O'Brien" in out
    status, out = await command("history", "NOMS:A9999ZZ")
    assert (status, out) == (1, "")
    with pytest.raises(SystemExit):
        parse_arguments(["history", "PNC:12/394773A"])  # wrong check letter
    status, out = await command("verify-index")
    assert status == 0 and out.count("matches") == 3
    await pool.execute(f'DELETE FROM "{schema}".search_name')  # an index gone wrong
    status, out = await command("verify-index")
    assert status == 1 and "DIFFERS" in out and "only in" in out
    with pytest.raises(UsageError, match="--yes"):
        await command("rebuild-index")
    status, out = await command("rebuild-index", "--yes")
    assert status == 0 and "identity_search" in out
    status, out = await command("verify-index")
    assert status == 0 and out.count("matches") == 3
    status, out = await command("audit")
    assert status == 0 and "intact" in out
    assert await command("history", str(uuid4())) == (1, "")

    # What the operator looked at above is in the access log, under their login.
    status, out = await command("access-log", str(registered.person_id))
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"Consultations of {registered.person_id}:"
    assert lines[1].split()[:3] == ["at", "(UTC)", "by"]
    operator = f"operator:{getpass.getuser()}"
    assert [line.split()[2:4] for line in lines[3:]] == [
        [operator, "get_person_history"],  # history PERSON_ID
        [operator, "holder_of"],  # history PNC:12/394773H: who held it
        [operator, "get_person_history"],  # then their record
        [operator, "verify_search_index"],  # the differing rows verify-index showed
    ]
    status, out = await command("access-log", "PNC:12/394773H")
    lines = out.splitlines()
    assert status == 0 and len(lines) == 4 and lines[3].split()[2:4] == [operator, "holder_of"]
    assert "identifier: PNC 2012/0394773H" in lines[3]
    # The lookup of a number no one held is there too, having shown nobody.
    status, out = await command("access-log", "NOMS:A9999ZZ")
    (missed,) = out.splitlines()[3:]
    assert missed.split()[2:4] == [operator, "holder_of"] and "nobody" in missed.split()
    status, out = await command("access-log", "NOMS:A9999ZZ", "--since", "2999-01-01T00:00:00Z")
    assert out.splitlines()[1] == "None recorded."
    # Everything the operator consulted, for a question about one caller.
    status, out = await command("access-log", "--by", operator)
    lines = out.splitlines()
    assert lines[0] == f"Consultations by {operator}:"
    assert {line.split()[3] for line in lines[3:]} == {
        "get_person_history",
        "holder_of",
        "verify_search_index",
    }
    with pytest.raises(SystemExit):
        parse_arguments(["access-log", str(uuid4()), "--by", operator])  # one or the other

    # With a cipher key the events were not written with, the tools that read events
    # refuse; the audit, which hashes what is stored, and the status still run.
    monkeypatch.setenv("THROUGHLINE_CIPHER_KEY", AESCipher.create_key(32))
    with pytest.raises(UsageError, match="written with another cipher key"):
        await command("history", str(registered.person_id))
    status, out = await command("audit")
    assert status == 0 and "intact" in out
    status, out = await command("status")
    assert status == 0 and "(up to date)" in out


def test_the_command_line_refuses_a_missing_store_and_a_time_without_a_zone(
    test_database_url,
):
    environment = {**os.environ, "DATABASE_URL": test_database_url}

    def admin(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "services.identity.admin", *argv],
            capture_output=True,
            text=True,
            env=environment,
            timeout=60,
        )

    missing = admin("--schema", "no_such_store", "audit")
    assert missing.returncode == 2
    assert "no identity store in schema 'no_such_store'" in missing.stderr
    naive = admin("history", str(uuid4()), "--known-at", "2026-11-01T09:00:00")
    assert naive.returncode == 2 and "has no time zone" in naive.stderr


async def test_status_says_how_far_the_search_index_is_behind(pool):
    identity = await bootstrap(pool, schema=new_schema_name("status"), cipher_key="")
    try:  # the index is not started: it falls behind
        empty = await identity.application.status()
        assert (empty.head_position, empty.newest_recorded_at, empty.index_behind) == (0, None, 0)
        await identity.application.register_person(
            uuid4(), Name("Ann", "Example"), date(1980, 5, 17), Sex.FEMALE, [PNC], []
        )
        found = await identity.application.status()
        assert found.head_position == 2 and found.index_behind == 2
        assert found.newest_recorded_at is not None
        assert (found.index.active_people, found.index.identifiers) == (0, 0)
    finally:
        await identity.close()


async def test_the_access_log_is_kept_by_the_month_and_old_months_are_retired_whole(
    identity, pool, capsys, test_database_url
):
    schema = identity.store.schema
    # Entries late in September and October and early in November; the clock then
    # stays in November.
    november = datetime(2026, 11, 1, 0, 30, tzinfo=UTC)
    moments = itertools.chain(
        [datetime(2026, 9, 30, 23, 0, tzinfo=UTC), datetime(2026, 10, 31, 23, 59, tzinfo=UTC)],
        itertools.repeat(november),
    )
    log = AccessLog(pool, schema, clock=lambda: next(moments))
    person = uuid4()
    for _ in range(3):
        await log.record("get_person", {"person_id": person}, [person])
    assert await log.months() == [
        (date(2026, 9, 1), 1),
        (date(2026, 10, 1), 1),
        (date(2026, 11, 1), 1),
    ]
    assert [a.at.month for a in await log.of_person(person)] == [9, 10, 11]

    with pytest.raises(ValueError, match="first day"):
        await log.retire_before(date(2026, 10, 15))
    with pytest.raises(ValueError, match="current month"):
        await log.retire_before(date(2026, 12, 1))  # the clock reads November
    assert await log.retire_before(date(2026, 10, 1)) == [(date(2026, 9, 1), 1)]
    assert [m for m, _ in await log.months()] == [date(2026, 10, 1), date(2026, 11, 1)]
    assert [a.at.month for a in await log.of_person(person)] == [10, 11]

    # The operator's command lists first, and drops only when told to.
    async def command(*argv: str) -> tuple[int, list[str]]:
        status = await run(parse_arguments(["--schema", schema, *argv]), test_database_url)
        return status, capsys.readouterr().out.splitlines()

    status, out = await command("retire-access-log", "--before", "2026-11")
    assert status == 0 and [line.split() for line in out[2:4]] == [
        ["2026-10", "1", "to", "retire"],
        ["2026-11", "1", "kept"],
    ]
    assert out[-1] == "Nothing dropped: add --yes to drop the months before 2026-11."
    status, out = await command("retire-access-log", "--before", "2026-11", "--yes")
    assert status == 0 and out[-1] == "Dropped 2026-10 (1 entries)."
    assert [m for m, _ in await log.months()] == [date(2026, 11, 1)]
    with pytest.raises(SystemExit):
        parse_arguments(["retire-access-log", "--before", "2026-13"])


async def test_an_access_log_kept_before_monthly_partitions_is_refused_clearly(pool):
    schema = new_schema_name("unpartitioned")
    await pool.execute(f'CREATE SCHEMA "{schema}"')
    await pool.execute(f'CREATE TABLE "{schema}".access_log (id bigserial PRIMARY KEY)')
    async with pool.acquire() as conn:
        with pytest.raises(EventStoreError, match="not partitioned by month"):
            await create_access_log(conn, schema)
    await pool.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def test_keys_says_which_cipher_key_each_event_needs_and_which_none_reads(
    pool, capsys, test_database_url, monkeypatch
):
    schema = new_schema_name("keys")
    old, new = AESCipher.create_key(32), AESCipher.create_key(32)
    before = await bootstrap(pool, schema=schema, cipher_key=old, old_cipher_keys=[])
    await before.application.register_person(
        uuid4(), Name("Ann", "Example"), date(1980, 5, 17), Sex.FEMALE, [PNC], []
    )  # positions 1 and 2: the person and the claim on the PNC
    await before.close()
    after = await bootstrap(pool, schema=schema, cipher_key=new, old_cipher_keys=[old])
    await after.application.register_person(
        uuid4(), Name("Bob", "Example"), date(1981, 5, 17), Sex.MALE, [], []
    )  # position 3
    await after.close()

    async def keys(current: str, *previous: str) -> tuple[int, list[list[str]]]:
        monkeypatch.setenv("THROUGHLINE_CIPHER_KEY", current)
        monkeypatch.setenv("THROUGHLINE_CIPHER_OLD_KEYS", ",".join(previous))
        status = await run(parse_arguments(["--schema", schema, "keys"]), test_database_url)
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == f"{schema}: 3 events"
        return status, [line.split("  ") for line in lines[3:]]

    def cells(rows: list[list[str]]) -> list[list[str]]:
        return [[cell.strip() for cell in row if cell.strip()] for row in rows]

    status, rows = await keys(new, old)
    assert status == 0
    assert cells(rows) == [
        [fingerprint(new), "current", "1", "3..3"],
        [fingerprint(old), "old 1", "2", "1..2"],
    ]
    # Without the old key, the tool still runs (it is how one finds the gap) and fails.
    status, rows = await keys(new)
    assert status == 1
    assert cells(rows) == [
        [fingerprint(new), "current", "1", "3..3"],
        ["read by none", "2", "1, 2"],
    ]
    # Without any key, no encrypted event reads.
    status, rows = await keys("")
    assert status == 1
    assert cells(rows) == [
        ["none", "no key set", "0", "no events"],
        ["read by none", "3", "1, 2, 3"],
    ]
    # A key no event needs shows as such: it may be dropped.
    spare = AESCipher.create_key(32)
    status, rows = await keys(new, old, spare)
    assert status == 0 and cells(rows)[2] == [fingerprint(spare), "old 2", "0", "no events"]
    # Keys that are malformed are refused before anything is read, naming the variable.
    monkeypatch.setenv("THROUGHLINE_CIPHER_OLD_KEYS", "not a key")
    admin = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "services.identity.admin", "--schema", schema, "keys"],
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "DATABASE_URL": test_database_url},
    )
    _, stderr = await asyncio.wait_for(admin.communicate(), 60)
    assert admin.returncode == 2
    assert stderr.decode().startswith("THROUGHLINE_CIPHER_OLD_KEYS, key 1: a cipher key must be")


async def test_keys_reports_a_store_written_without_encryption(identity, capsys, test_database_url):
    await identity.application.register_person(
        uuid4(), Name("Ann", "Example"), date(1980, 5, 17), Sex.FEMALE, [], []
    )
    argv = ["--schema", identity.store.schema, "keys"]
    assert await run(parse_arguments(argv), test_database_url) == 0
    assert capsys.readouterr().out.splitlines()[3].split() == [
        "none",
        "no",
        "key",
        "set",
        "1",
        "1..1",
    ]
