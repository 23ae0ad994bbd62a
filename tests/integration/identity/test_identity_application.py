"""Identity commands and queries against real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from datetime import date
from uuid import uuid4

import asyncpg
import pytest
from eventsourcing.cryptography import AESCipher

from libs.domain.errors import (
    AlreadyExistsError,
    InvalidFieldError,
    NotFoundError,
    RuleViolatedError,
)
from libs.eventstore import CommandReusedError, ProjectionLagError, UnreadableStoreError
from libs.eventstore.context import Actor, current_actor
from libs.eventstore.keyring import fingerprint
from services.identity.application import asked
from services.identity.bootstrap import (
    WRITE_GROUP_FILL,
    WRITE_WINDOW_LEAST,
    WRITE_WINDOW_MOST,
    bootstrap,
)
from services.identity.domain import Name, Sex
from services.identity.identifiers import parse_identifier
from services.identity.search_index import BROAD_CANDIDATE_LIMIT
from services.identity.synthetic import population
from tests.conftest import new_schema_name
from tests.plans import generic_plan
from tests.unit.identity.test_person import ALIREZA

PNC = parse_identifier("PNC", "12/394773H")
CRO = parse_identifier("CRO", "29906/12J")
NOMS = parse_identifier("NOMS", "A1234AA")


async def register(
    app, given="Ann", family="Example", dob=date(1980, 5, 17), ids=(), aliases=(), command=None
):
    return await app.register_person(
        command or uuid4(), Name(given, family), dob, Sex.FEMALE, list(ids), list(aliases)
    )


async def test_a_registered_person_is_found_by_id_and_by_any_identifier(identity):
    app = identity.application
    written = await register(app, ids=[PNC, NOMS])
    view = await app.get_person(written.person_id)
    assert view.person.name == Name("Ann", "Example") and view.redirected_from is None
    assert (await app.get_person_by_identifier(NOMS)).person.id == written.person_id
    with pytest.raises(NotFoundError):
        await app.get_person_by_identifier(CRO)
    with pytest.raises(NotFoundError):
        await app.get_person(uuid4())


async def test_an_identifier_held_by_one_person_cannot_be_recorded_on_another(identity):
    app = identity.application
    first = await register(app, ids=[PNC])
    second = await register(app, given="Bob")
    with pytest.raises(AlreadyExistsError) as raised:
        await app.record_identifier(uuid4(), second.person_id, PNC)
    assert raised.value.holder == str(first.person_id)
    with pytest.raises(AlreadyExistsError):
        await register(app, given="Cat", ids=[PNC])


async def test_two_people_racing_for_one_identifier_leaves_one_holder(identity):
    app = identity.application
    outcomes = await asyncio.gather(
        *(register(app, given=f"P{i}", ids=[CRO]) for i in range(6)), return_exceptions=True
    )
    winners = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(winners) == 1
    assert all(isinstance(o, AlreadyExistsError) for o in outcomes if o not in winners)
    assert (await app.get_person_by_identifier(CRO)).person.id == winners[0].person_id


async def test_a_retried_command_returns_the_first_result_and_records_nothing(identity):
    app = identity.application
    command = uuid4()
    first = await register(app, ids=[PNC], command=command)
    head = await identity.store.head_position()
    again = await register(app, ids=[PNC], command=command)
    assert again.person_id == first.person_id and again.duplicate
    assert await identity.store.head_position() == head


async def test_concurrent_registrations_share_writes_under_the_adaptive_window(identity):
    store = identity.store
    assert store.adapt_window is not None and store.adapt_window.fill == WRITE_GROUP_FILL
    for wave in range(5):
        await asyncio.gather(
            *(
                register(identity.application, given=f"Ann{chr(97 + wave)}{chr(97 + n)}")
                for n in range(8)
            )
        )
    assert store.grouped_appends == 40
    assert store.groups < 40  # registrations arriving together were written together
    assert WRITE_WINDOW_LEAST <= store.batch_window <= WRITE_WINDOW_MOST


async def test_a_command_id_reused_for_a_different_command_is_refused(identity):
    app = identity.application
    command = uuid4()
    first = await register(app, ids=[PNC], command=command)
    head = await identity.store.head_position()
    with pytest.raises(CommandReusedError):
        await register(app, given="Different", ids=[PNC], command=command)
    with pytest.raises(CommandReusedError):
        await register(app, ids=[PNC], dob=date(1980, 5, 18), command=command)
    with pytest.raises(CommandReusedError):
        await app.add_alias(command, first.person_id, Name("Annie", "Example"))
    assert await identity.store.head_position() == head


def test_a_command_gaining_an_optional_argument_keeps_its_digest():
    assert asked("register_person", name="Ann", occurred_at=None) == asked(
        "register_person", name="Ann"
    )
    assert asked("register_person", name="Ann") != asked("register_person", name="Anne")
    assert asked("register_person", name="Ann") != asked("change_name", name="Ann")


async def test_a_reused_command_id_is_refused_even_when_the_new_command_cannot_be_done(identity):
    # Deciding fails here, so the store is asked for the command's earlier result: a
    # different command's result must not be handed back as this one's.
    app = identity.application
    survivor, duplicate = await register(app), await register(app, given="Anne")
    command = uuid4()
    await app.merge_people(command, survivor.person_id, duplicate.person_id, "same person")
    with pytest.raises(CommandReusedError):
        await app.merge_people(command, duplicate.person_id, survivor.person_id, "same person")
    with pytest.raises(CommandReusedError):
        await app.merge_people(command, survivor.person_id, duplicate.person_id, "other reason")


async def test_retiring_an_identifier_frees_it_for_someone_else(identity):
    app = identity.application
    first = await register(app, ids=[PNC])
    second = await register(app, given="Bob")
    await app.retire_identifier(uuid4(), first.person_id, PNC, "entered on the wrong record")
    await app.record_identifier(uuid4(), second.person_id, PNC)
    assert (await app.get_person_by_identifier(PNC)).person.id == second.person_id


async def test_a_merge_moves_identifiers_redirects_and_an_unmerge_reverses_it(identity):
    app = identity.application
    survivor = await register(app, ids=[NOMS])
    duplicate = await register(app, given="Anne", ids=[PNC])
    await app.merge_people(uuid4(), survivor.person_id, duplicate.person_id, "same fingerprints")

    view = await app.get_person(duplicate.person_id)
    assert view.person.id == survivor.person_id
    assert view.redirected_from == duplicate.person_id
    assert view.person.identifiers == {NOMS, PNC}
    assert (await app.get_person_by_identifier(PNC)).person.id == survivor.person_id
    with pytest.raises(RuleViolatedError):
        await app.merge_people(uuid4(), duplicate.person_id, survivor.person_id, "circular")
    with pytest.raises(RuleViolatedError):
        await app.record_identifier(uuid4(), duplicate.person_id, CRO)

    await app.unmerge_people(uuid4(), survivor.person_id, duplicate.person_id, "two people")
    assert (await app.get_person(duplicate.person_id)).redirected_from is None
    assert (await app.get_person_by_identifier(PNC)).person.id == duplicate.person_id
    assert (await app.get_person(survivor.person_id)).person.identifiers == {NOMS}


async def test_corrections_and_death_are_recorded_with_the_previous_value(identity):
    app = identity.application
    person = await register(app)
    await app.correct_date_of_birth(uuid4(), person.person_id, date(1980, 7, 15), "typo")
    await app.change_name(uuid4(), person.person_id, Name("Ann", "Married"), "marriage")
    await app.add_alias(uuid4(), person.person_id, Name("Annie", "Example"))
    await app.record_death(uuid4(), person.person_id, date(2026, 1, 2))
    current = (await app.get_person(person.person_id)).person
    assert current.date_of_birth == date(1980, 7, 15)
    assert current.name == Name("Ann", "Married")
    assert {Name("Ann", "Example"), Name("Annie", "Example")} <= set(current.aliases)
    assert current.date_of_death == date(2026, 1, 2)
    as_registered = await identity.application.repository.get(person.person_id, version=1)
    assert as_registered.date_of_birth == date(1980, 5, 17)


async def test_a_death_recorded_in_error_is_withdrawn_and_kept_in_history(identity):
    app = identity.application
    person = await register(app)
    recorded = await app.record_death(uuid4(), person.person_id, date(2026, 1, 2))
    command = uuid4()
    withdrawn = await app.correct_death(command, person.person_id, None, "wrong person")
    assert (await app.get_person(person.person_id)).person.date_of_death is None
    retried = await app.correct_death(command, person.person_id, None, "wrong person")
    assert (retried.position, retried.duplicate) == (withdrawn.position, True)
    with pytest.raises(CommandReusedError):
        await app.correct_death(command, person.person_id, date(2026, 1, 3), "wrong person")
    # Version 2: the registration, then the death as first recorded.
    as_first_recorded = await app.repository.get(person.person_id, version=2)
    assert as_first_recorded.date_of_death == date(2026, 1, 2)
    assert recorded.position < withdrawn.position


async def test_a_retired_alias_is_no_longer_matched(identity):
    app = identity.application
    person = await register(app, given="Martha", family="Kowalski", aliases=[Name("Zed", "Quill")])
    await app.wait_for_index(person.position)
    by_alias = {"names": [Name("Zed", "Quill")], "date_of_birth": None, "identifiers": []}
    found = (await app.search_people(**by_alias)).candidates
    assert [c.person_id for c in found] == [person.person_id]
    retired = await app.retire_alias(uuid4(), person.person_id, Name("Zed", "Quill"), "error")
    assert (await app.search_people(**by_alias, min_position=retired.position)).candidates == []
    corrected = await app.correct_sex(uuid4(), person.person_id, Sex.MALE, "keyed in error")
    assert (await app.get_person(person.person_id)).person.sex is Sex.MALE
    await app.wait_for_index(corrected.position)
    profile, _ = await app.search_index.profile_of(person.person_id)
    assert profile.sex == "MALE"


async def test_search_sees_a_write_when_asked_for_its_position(identity):
    app = identity.application
    written = await register(app, given="Zoë", family="O'Brien-Łukasz", ids=[PNC])
    found = (
        await app.search_people(
            names=[Name("Zoe", "OBrien Lukasz")],
            date_of_birth=date(1980, 5, 17),
            identifiers=[],
            min_position=written.position,
        )
    ).candidates
    assert found[0].person_id == written.person_id
    assert found[0].match.score > 0.9
    by_pnc = (await app.search_people(names=[], date_of_birth=None, identifiers=[PNC])).candidates
    assert by_pnc[0].person_id == written.person_id and "exact PNC" in by_pnc[0].match.reasons


async def test_a_search_index_that_falls_behind_says_how_far_it_got(pool):
    identity = await bootstrap(pool, schema=new_schema_name("identity"), cipher_key="")
    try:  # the index is not running, so it stays at 0
        written = await register(identity.application)
        with pytest.raises(ProjectionLagError) as lag:
            await identity.application.wait_for_index(written.position, timeout=0.05)
        assert (lag.value.position, lag.value.wanted) == (0, written.position)
        with pytest.raises(InvalidFieldError) as unwritten:
            await identity.application.wait_for_index(written.position + 1)
        assert unwritten.value.violations[0][0] == "min_position"
    finally:
        await identity.close()


async def test_names_in_other_scripts_are_stored_as_given_and_found(identity):
    app = identity.application
    people = {
        "Cyrillic": await register(app, given="Дмитрий", family="Иванов", dob=date(1975, 2, 3)),
        "Arabic": await register(app, given="محمد", family="الحسن", dob=date(1990, 8, 1)),
        "Greek": await register(app, given="Νίκος", family="Παπαδόπουλος", dob=date(1968, 11, 30)),
        "Persian": await register(
            app,
            given=Name.checked(ALIREZA, "x").given_names,
            family="محمدی",
            dob=date(1988, 3, 21),
        ),
    }
    await app.wait_for_index(await identity.store.head_position())
    assert (await app.get_person(people["Arabic"].person_id)).person.name == Name("محمد", "الحسن")
    searches = {
        "Cyrillic": ([Name("дмитрий", "ИВАНОВ")], date(1975, 2, 3)),  # case differs
        "Arabic": ([Name("محمد", "الحسن")], date(1990, 8, 1)),
        "Greek": ([Name("Νικος", "Παπαδοπουλος")], date(1968, 11, 30)),  # no accents
        "Persian": ([Name("علیرضا", "محمدی")], date(1988, 3, 21)),  # typed without the joiner
    }
    for script, (names, dob) in searches.items():
        found = (await app.search_people(names=names, date_of_birth=dob, identifiers=[])).candidates
        assert found[0].person_id == people[script].person_id, script
        assert found[0].match.score >= 0.9, (script, found[0].match)
    # By name alone the match is weaker, but the person is still found.
    by_name = (
        await app.search_people(
            names=[Name("Дмитрий", "Иванов")], date_of_birth=None, identifiers=[]
        )
    ).candidates
    assert by_name[0].person_id == people["Cyrillic"].person_id
    assert "family name exact" in by_name[0].match.reasons[0]


async def test_search_finds_misspelt_swapped_alias_and_mistyped_dates(identity):
    app = identity.application
    target = await register(
        app,
        given="Martha",
        family="Kowalski",
        dob=date(1979, 3, 12),
        aliases=[Name("Marta", "Smith")],
    )
    await register(app, given="Unrelated", family="Person", dob=date(1979, 3, 12))
    await app.wait_for_index(await identity.store.head_position())
    queries = {
        "misspelt": ([Name("Marhta", "Kowalsky")], date(1979, 3, 12)),
        "swapped": ([Name("Kowalski", "Martha")], date(1979, 3, 12)),
        "alias": ([Name("Marta", "Smith")], date(1979, 3, 12)),
        "one digit": ([Name("Martha", "Kowalski")], date(1979, 3, 13)),
        "day and month swapped": ([Name("Martha", "Kowalski")], date(1979, 12, 3)),
    }
    for label, (names, dob) in queries.items():
        found = (await app.search_people(names=names, date_of_birth=dob, identifiers=[])).candidates
        assert found and found[0].person_id == target.person_id, label
        assert found[0].match.score >= 0.5, (label, found[0].match)
    swapped = (
        await app.search_people(
            names=queries["swapped"][0], date_of_birth=date(1979, 3, 12), identifiers=[]
        )
    ).candidates
    assert "given and family names swapped" in swapped[0].match.reasons
    alias = (
        await app.search_people(
            names=queries["alias"][0], date_of_birth=date(1979, 3, 12), identifiers=[]
        )
    ).candidates
    assert any(r.startswith("alias matched") for r in alias[0].match.reasons)


async def test_swapped_names_are_found_without_a_date_of_birth_or_with_a_mistyped_one(identity):
    app = identity.application
    target = await register(app, given="Martha", family="Kowalski", dob=date(1979, 3, 12))
    await register(app, given="Kowalski", family="Martha", dob=date(1950, 1, 1))
    await app.wait_for_index(await identity.store.head_position())
    swapped = [Name("Kowalski", "Martha")]

    by_name = (
        await app.search_people(names=swapped, date_of_birth=None, identifiers=[])
    ).candidates
    assert target.person_id in [c.person_id for c in by_name]
    found = next(c for c in by_name if c.person_id == target.person_id)
    assert found.match.reasons == ("given and family names swapped",)

    mistyped = (
        await app.search_people(names=swapped, date_of_birth=date(1979, 3, 13), identifiers=[])
    ).candidates
    assert mistyped[0].person_id == target.person_id
    assert mistyped[0].match.reasons == (
        "given and family names swapped",
        "date of birth one digit off",
    )
    assert mistyped[0].match.score >= 0.5


async def test_a_search_by_one_part_of_a_name_finds_the_person(identity):
    app = identity.application
    target = await register(app, given="Martha", family="Kowalski", dob=date(1979, 3, 12))
    await register(app, given="Martha", family="Unrelated", dob=date(1950, 6, 1))
    await app.wait_for_index(await identity.store.head_position())

    async def found(names, dob):
        candidates = (
            await app.search_people(names=names, date_of_birth=dob, identifiers=[])
        ).candidates
        return {c.person_id: c.match.reasons for c in candidates}

    # The family name alone, without a date of birth: found by its sound.
    assert (await found([Name("", "Kowalsky")], None)) == {
        target.person_id: ("family name Jaro-Winkler 0.95",)
    }
    # The given name with a date of birth one digit off.
    assert (await found([Name("Martha", "")], date(1979, 3, 13))) == {
        target.person_id: ("given name exact", "date of birth one digit off")
    }
    # A given name alone would read everyone; finding no one would wrongly say the
    # person is not on the record.
    with pytest.raises(InvalidFieldError) as raised:
        await found([Name("Martha", "")], None)
    assert raised.value.violations[0][0] == "name.family_name"


async def test_a_search_says_when_more_people_match_than_it_reads(identity):
    app = identity.application

    async def register_kowalski(n):
        given = f"Ann{chr(97 + n // 26)}{chr(97 + n % 26)}"  # Annaa, Annab...: no digits
        return await register(app, given=given, family="Kowalski", dob=date(1950, 1, 1 + n % 28))

    async def by_family_name(position):
        return await app.search_people(
            names=[Name("", "Kowalski")], date_of_birth=None, identifiers=[], min_position=position
        )

    for n in range(BROAD_CANDIDATE_LIMIT):
        written = await register_kowalski(n)
    all_read = await by_family_name(written.position)
    assert not all_read.incomplete and len(all_read.candidates) == 10
    written = await register_kowalski(BROAD_CANDIDATE_LIMIT)
    broad = await by_family_name(written.position)
    assert broad.incomplete and len(broad.candidates) == 10
    narrow = await app.search_people(
        names=[Name("Annah", "Kowalski")], date_of_birth=date(1950, 1, 8), identifiers=[]
    )
    assert not narrow.incomplete and narrow.candidates[0].given_names == "Annah"
    assert narrow.candidates[0].match.reasons == (
        "family name exact, given name exact",
        "date of birth exact",
    )


async def test_twins_are_not_possible_duplicates_and_overrides_are_respected(identity):
    app = identity.application
    twin_a = await register(app, given="Alice", family="Jones", dob=date(1990, 1, 1))
    twin_b = await register(app, given="Beatrice", family="Jones", dob=date(1990, 1, 1))
    copy = await register(app, given="Alice", family="Jones", dob=date(1990, 1, 11))
    await app.wait_for_index(await identity.store.head_position())
    duplicates = (await app.list_possible_duplicates(twin_a.person_id)).candidates
    assert [c.person_id for c in duplicates] == [copy.person_id]
    assert twin_b.person_id not in [c.person_id for c in duplicates]

    marked = await app.mark_not_duplicate(
        uuid4(), twin_a.person_id, copy.person_id, "checked: cousins"
    )
    after = await app.list_possible_duplicates(twin_a.person_id, min_position=marked.position)
    assert after.candidates == [] and not after.incomplete


async def test_a_not_duplicate_decision_follows_the_people_through_a_merge(identity):
    app = identity.application
    a = (await register(app, given="John", family="Smith", dob=date(1980, 1, 1))).person_id
    b = (await register(app, given="John", family="Smith", dob=date(1980, 1, 1))).person_id
    c = (await register(app, given="John", family="Smith", dob=date(1980, 1, 10))).person_id
    await app.wait_for_index(await identity.store.head_position())

    async def duplicates_of(person_id, position):
        found = await app.list_possible_duplicates(person_id, min_position=position)
        return {candidate.person_id for candidate in found.candidates}

    assert await duplicates_of(c, 0) == {a, b}
    await app.mark_not_duplicate(uuid4(), a, c, "different fingerprints")
    merged = await app.merge_people(uuid4(), b, a, "same fingerprints")

    # c was decided not to be a, and a is now part of b: b is not a duplicate of c.
    assert await duplicates_of(c, merged.position) == set()
    assert await duplicates_of(b, merged.position) == set()
    for survivor, duplicate in ((b, c), (c, b)):
        with pytest.raises(RuleViolatedError) as raised:
            await app.merge_people(uuid4(), survivor, duplicate, "looks the same")
        assert raised.value.rule == "marked_not_duplicate"

    unmerged = await app.unmerge_people(uuid4(), b, a, "two people after all")
    assert await duplicates_of(c, unmerged.position) == {b}


async def test_the_search_index_reads_by_key_with_plans_made_while_it_is_small(identity, pool):
    # After a prepared statement's first five runs, PostgreSQL may settle on a generic
    # plan, made for the table's size then, and keep it until the table is next analysed
    # (on a new database, a minute or more). One that scanned a table while the index
    # was small would go on scanning it as it grew. Here the generic plan is forced; it
    # is one plan for any arguments.
    app = identity.application
    a = (await register(app, ids=[PNC], aliases=[Name("Nan", "Example")])).person_id
    b = (await register(app, given="Anne", ids=[NOMS])).person_id
    c = (await register(app, given="Annie")).person_id
    await app.merge_people(uuid4(), a, b, "same")
    await app.mark_not_duplicate(uuid4(), a, c, "different fingerprints")
    # Enough people that PostgreSQL 15 and 18 both planned scans of search_name for
    # SearchPeople's sound blocks as they were written before.
    people = population(1000)
    await asyncio.gather(
        *(
            register(app, given=p.name.given_names, family=p.name.family_name, dob=p.date_of_birth)
            for p in people
        )
    )
    await app.wait_for_index(await identity.store.head_position())
    index = app.search_index
    asked = {
        "search": (
            index._search,
            "'{PNC}', '{x}', '1980-05-17', '{EX}', '{E251}', '{1980-05-17}', '{A500}'",
        ),
        "kept_apart": (index._kept_apart, f"'{a}'"),
        "profile": (index._profile, f"'{a}'"),
        "delete_names": (index._delete_names, f"'{a}'"),
        "delete_identifiers": (index._delete_identifiers, f"'{a}'"),
    }
    async with pool.acquire() as conn:
        for name, (statement, arguments) in asked.items():
            plan = await generic_plan(conn, statement, arguments)
            assert "Seq Scan on search_" not in plan, (name, plan)
            assert "Index" in plan, (name, plan)


async def test_an_unmerge_must_start_from_the_latest_merge(identity):
    app = identity.application
    a = (await register(app, ids=[PNC])).person_id
    b = (await register(app, given="Anne")).person_id
    c = (await register(app, given="Annie")).person_id
    await app.merge_people(uuid4(), b, a, "same")
    await app.merge_people(uuid4(), c, b, "same")
    with pytest.raises(RuleViolatedError) as raised:
        await app.unmerge_people(uuid4(), b, a, "different people")
    assert raised.value.rule == "survivor_merged"
    assert (await app.get_person_by_identifier(PNC)).person.id == c

    await app.unmerge_people(uuid4(), c, b, "different people")
    await app.unmerge_people(uuid4(), b, a, "different people")
    assert (await app.get_person_by_identifier(PNC)).person.id == a
    assert (await app.get_person(a)).person.identifiers == {PNC}


async def test_rebuilding_the_search_index_from_events_gives_the_same_index(identity, pool):
    app = identity.application
    a = await register(app, ids=[PNC])
    b = await register(app, given="Anne", ids=[NOMS])
    await app.merge_people(uuid4(), a.person_id, b.person_id, "same")
    await app.add_alias(uuid4(), a.person_id, Name("Nan", "Example"))
    head = await identity.store.head_position()
    await app.wait_for_index(head)
    schema = identity.store.schema

    async def snapshot():
        return [
            sorted(tuple(r) for r in await pool.fetch(f'SELECT * FROM "{schema}".{table}'))
            for table in ("search_person", "search_name", "search_identifier")
        ]

    live = await snapshot()
    await identity.close()  # stop the live projection before rebuilding
    assert await identity.projection.rebuild() == head
    assert await snapshot() == live


async def test_an_index_from_before_people_were_kept_whole_is_upgraded_when_the_service_starts(
    identity, pool, caplog
):
    """An index made before search_person held each person's names and identifiers gets
    them, filled from its own rows, the same as the projection writes them."""
    app = identity.application
    a = await register(app, ids=[PNC, CRO], aliases=[Name("Nan", "Exàmple")])
    b = await register(app, given="Anne", ids=[NOMS])
    await app.merge_people(uuid4(), a.person_id, b.person_id, "same")
    await app.wait_for_index(await identity.store.head_position())
    schema = identity.store.schema
    people = f'"{schema}".search_person'

    async def whole() -> dict:
        rows = await pool.fetch(f"SELECT person_id, names, identifiers FROM {people}")
        return {r["person_id"]: (r["names"], r["identifiers"]) for r in rows}

    written = await whole()
    assert written == {
        a.person_id: (
            ["ann|example", "nan|example", "anne|example"],
            [f"CRO|{CRO.value}", f"NOMS|{NOMS.value}", f"PNC|{PNC.value}"],
        ),
        b.person_id: ([], []),
    }
    await identity.close()
    await pool.execute(f"ALTER TABLE {people} DROP COLUMN names, DROP COLUMN identifiers")
    # Rows stored in the reverse of the order they are kept in: the upgrade must order.
    for table, order in (("search_name", "ordinal"), ("search_identifier", "type, value")):
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f'CREATE TEMP TABLE kept ON COMMIT DROP AS TABLE "{schema}".{table}')
            await conn.execute(f'DELETE FROM "{schema}".{table}')
            await conn.execute(
                f'INSERT INTO "{schema}".{table} SELECT * FROM kept ORDER BY {order} DESC'
            )

    with caplog.at_level(logging.INFO, logger="services.identity.search_index"):
        upgraded = await bootstrap(pool, schema=schema, cipher_key="")
    assert f"search index in {schema} upgraded in " in caplog.text  # a long wait, explained
    assert await whole() == written
    nullable = await pool.fetch(
        "SELECT attname, attnotnull FROM pg_attribute WHERE attrelid = $1::regclass "
        "AND attname IN ('names', 'identifiers') ORDER BY attname",
        people,
    )
    assert [tuple(r) for r in nullable] == [("identifiers", True), ("names", True)]
    found = await upgraded.application.search_people(
        names=[Name("Nan", "Example")], date_of_birth=None, identifiers=[]
    )
    assert [c.person_id for c in found.candidates] == [a.person_id]
    assert "alias matched" in " ".join(found.candidates[0].match.reasons)
    check = await upgraded.application.verify_search_index()  # against a rebuild from events
    assert check.matches, check
    await upgraded.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="services.identity.search_index"):
        again = await bootstrap(pool, schema=schema, cipher_key="")  # nothing left to upgrade
    assert "upgraded" not in caplog.text
    assert await whole() == written
    await again.close()


async def test_retries_of_commands_that_changed_the_record_return_the_first_result(identity):
    app = identity.application
    person = await register(app)
    other = await register(app, given="Bob")
    record = uuid4()
    first = await app.record_identifier(record, person.person_id, PNC)
    # Deciding again would now record nothing (the person holds PNC already).
    again = await app.record_identifier(record, person.person_id, PNC)
    assert (again.position, again.duplicate) == (first.position, True)
    merge = uuid4()
    merged = await app.merge_people(merge, person.person_id, other.person_id, "same")
    # Deciding again would now fail (Bob is already merged); the retry still succeeds.
    retried = await app.merge_people(merge, person.person_id, other.person_id, "same")
    assert (retried.person_id, retried.position) == (merged.person_id, merged.position)


async def test_the_service_will_not_start_with_a_cipher_key_its_events_were_not_written_with(
    pool,
):
    """Started with the wrong key (or none, or one where there was none), the service would
    fail every read and write events no reader could read beside the others: it refuses
    to start, and says which variable to set."""
    schema = new_schema_name("cipher")
    key = AESCipher.create_key(32)
    first = await bootstrap(pool, schema=schema, cipher_key=key)
    await first.application.register_person(
        uuid4(), Name("Ann", "Example"), date(1980, 5, 17), Sex.FEMALE, [], []
    )
    await first.close()
    for wrong in (AESCipher.create_key(32), ""):
        with pytest.raises(UnreadableStoreError, match="THROUGHLINE_CIPHER_KEY") as refused:
            await bootstrap(pool, schema=schema, cipher_key=wrong)
        assert "cannot read event 1 " in str(refused.value)
    again = await bootstrap(pool, schema=schema, cipher_key=key)
    person = await again.application.register_person(
        uuid4(), Name("Bob", "Example"), date(1981, 5, 17), Sex.MALE, [], []
    )
    await again.close()

    # Written without a key, then started with one: refused too.
    plain = new_schema_name("plain")
    with_none = await bootstrap(pool, schema=plain, cipher_key="")
    await with_none.application.register_person(
        uuid4(), Name("Cy", "Example"), date(1982, 5, 17), Sex.MALE, [], []
    )
    await with_none.close()
    with pytest.raises(UnreadableStoreError):
        await bootstrap(pool, schema=plain, cipher_key=key)
    assert person.position == 2  # started again with the right key, it wrote on


async def test_a_rotated_cipher_key_encrypts_new_events_while_old_keys_read_earlier_ones(pool):
    """Rotation rewrites nothing: events written before it stay as they are and are read
    with the old key, kept in THROUGHLINE_CIPHER_OLD_KEYS; a person's stream may hold
    events under both. Dropping a key still needed, or not moving to the new one, is
    refused at start-up, naming the variables."""
    schema = new_schema_name("rotation")
    old, new = AESCipher.create_key(32), AESCipher.create_key(32)
    before = await bootstrap(pool, schema=schema, cipher_key=old, old_cipher_keys=[])
    ann = await register(before.application, ids=[PNC])
    await before.close()

    rotated = await bootstrap(pool, schema=schema, cipher_key=new, old_cipher_keys=[old])
    app = rotated.application
    assert (await app.get_person(ann.person_id)).person.identifiers == {PNC}
    await app.record_identifier(uuid4(), ann.person_id, NOMS)  # Ann's stream: both keys
    bob = await register(app, given="Bob")
    view = await app.get_person(ann.person_id)
    assert view.person.identifiers == {PNC, NOMS}
    first, *_, newest = await rotated.store.read_all()
    ring = rotated.mapper.cipher
    assert ring.decrypt_with_key(first.state)[0] == fingerprint(old)
    assert ring.decrypt_with_key(newest.state)[0] == fingerprint(new)
    await rotated.close()

    for keys, unreadable in (([new, []], 1), ([old, []], bob.position)):
        with pytest.raises(UnreadableStoreError, match="THROUGHLINE_CIPHER_OLD_KEYS") as refused:
            await bootstrap(pool, schema=schema, cipher_key=keys[0], old_cipher_keys=keys[1])
        assert f"cannot read event {unreadable} " in str(refused.value)
    # The order of the old keys does not matter, nor does a key listed twice.
    again = await bootstrap(pool, schema=schema, cipher_key=new, old_cipher_keys=[new, old])
    assert (await again.application.get_person(bob.person_id)).person.name.given_names == "Bob"
    await again.close()


async def test_merges_racing_over_the_same_people_leave_every_identifier_with_one_holder(
    identity,
):
    """A into B and B into C at once, and A into B against B into A: whichever order the
    store puts them in, no identifier is lost, held twice, or held by a redirect."""
    app = identity.application
    outcomes = set()
    for trial in range(8):
        ids = [parse_identifier("NOMS", f"A{trial:04d}{suffix}") for suffix in ("AA", "BB", "CC")]
        a, b, c = [await register(app, given=f"P{trial}{n}", ids=[i]) for n, i in enumerate(ids)]
        merges = [
            app.merge_people(uuid4(), b.person_id, a.person_id, "same"),
            app.merge_people(uuid4(), c.person_id, b.person_id, "same"),
        ]
        # The store takes whichever append reaches its writer first: alternate.
        chain = await asyncio.gather(*merges[:: 1 if trial % 2 else -1], return_exceptions=True)
        refused = [o for o in chain if isinstance(o, Exception)]
        outcomes.add(len(refused))
        # Either both happened (A into B first) or B into C went first and A into B, its
        # survivor now a redirect, was refused.
        assert all(getattr(o, "rule", None) == "survivor_merged" for o in refused), refused
        assert len(refused) <= 1
        holders = {i: (await app.get_person_by_identifier(i)).person for i in ids}
        assert {p.id for p in holders.values()} == (
            {c.person_id} if not refused else {a.person_id, c.person_id}
        )
        for identifier, holder in holders.items():
            assert identifier in holder.identifiers and holder.merged_into is None

        d, e = [
            await register(
                app, given=f"Q{trial}{n}", ids=[parse_identifier("CRN", f"X{trial}0000{n}")]
            )
            for n in range(2)
        ]
        circle = await asyncio.gather(
            app.merge_people(uuid4(), d.person_id, e.person_id, "same"),
            app.merge_people(uuid4(), e.person_id, d.person_id, "same"),
            return_exceptions=True,
        )
        assert sum(isinstance(o, Exception) for o in circle) == 1, circle
        survivors = {(await app.get_person(p.person_id)).person.id for p in (d, e)}
        assert len(survivors) == 1
        (survivor,) = survivors
        kept = (await app.get_person(survivor)).person
        assert len(kept.identifiers) == 2 and kept.merged_into is None
    assert outcomes == {0, 1}  # both orders happened


async def test_an_identifier_recorded_during_a_merge_ends_with_the_survivor_or_is_refused(
    identity,
):
    app = identity.application
    outcomes = set()
    # Which command lands first is up to timing; trials go on until both orders are seen
    # (usually within a few), each checked in full.
    for trial in range(40):
        if outcomes == {0, 1}:
            break
        duplicate = await register(app, given=f"D{trial}")
        survivor = await register(app, given=f"S{trial}")
        late = parse_identifier("CRN", f"Y{trial:02d}0000")
        calls = [
            app.merge_people(uuid4(), survivor.person_id, duplicate.person_id, "same"),
            app.record_identifier(uuid4(), duplicate.person_id, late),
        ]
        results = await asyncio.gather(*calls[:: 1 if trial % 2 else -1], return_exceptions=True)
        refused = [r for r in results if isinstance(r, Exception)]
        # Merged first: recording on the redirect is refused. Recorded first: the merge
        # takes the new identifier along.
        assert all(getattr(r, "rule", None) == "person_merged" for r in refused), refused
        outcomes.add(len(refused))
        if refused:
            with pytest.raises(NotFoundError):
                await app.get_person_by_identifier(late)
        else:
            holder = (await app.get_person_by_identifier(late)).person
            assert holder.id == survivor.person_id and late in holder.identifiers
        assert (await app.get_person(duplicate.person_id)).redirected_from == duplicate.person_id
    assert outcomes == {0, 1}


async def test_every_consultation_is_logged_with_who_asked_and_whose_details_it_showed(
    identity, pool
):
    app = identity.application
    ann = await register(app, ids=[PNC])
    anne = await register(app, given="Anne")
    await app.wait_for_index(anne.position)
    token = current_actor.set(Actor("pom:sam"))
    try:
        await app.get_person(ann.person_id)
        await app.get_person_by_identifier(PNC)
        with pytest.raises(NotFoundError):
            await app.get_person_by_identifier(CRO)
        await app.person_history(ann.person_id)
        found = (
            await app.search_people(
                names=[Name("Ann", "Example")], date_of_birth=date(1980, 5, 17), identifiers=[]
            )
        ).candidates
        await app.list_possible_duplicates(ann.person_id, threshold=0.1)
    finally:
        current_actor.reset(token)

    seen = await app.access_log.of_person(ann.person_id)
    assert [(a.actor, a.action) for a in seen] == [
        ("pom:sam", "get_person"),
        ("pom:sam", "get_person"),
        ("pom:sam", "get_person_history"),
        ("pom:sam", "search_people"),
        ("pom:sam", "list_possible_duplicates"),
    ]
    assert seen[0].asked == {"person_id": str(ann.person_id)}
    assert seen[1].asked == {"identifier": "PNC 2012/0394773H"}
    assert seen[3].asked == {
        "names": [{"given_names": "Ann", "family_name": "Example"}],
        "date_of_birth": "1980-05-17",
    }
    assert (
        set(seen[3].disclosed)
        == {c.person_id for c in found}
        == {
            ann.person_id,
            anne.person_id,
        }
    )
    assert anne.person_id in seen[4].disclosed
    # A lookup that found no one is logged too: it shows what the caller could not know.
    (missed,) = await app.access_log.of_identifier("CRO 029906/12J")
    assert missed.disclosed == () and missed.actor == "pom:sam"
    assert seen[0].at <= seen[-1].at

    # Nothing is shown that is not logged: without the log, the lookup fails.
    await pool.execute(f'ALTER TABLE "{identity.store.schema}".access_log RENAME TO gone')
    with pytest.raises(asyncpg.UndefinedTableError):
        await app.get_person(ann.person_id)


async def test_consultations_arriving_together_are_logged_in_one_write(identity, pool):
    app = identity.application
    people = [await register(app, given=f"P{n}") for n in range(20)]
    statements = []
    original = app.access_log.pool.execute

    async def counted(sql, *args):
        if args:  # not the month's partition being made
            statements.append(len(args[0]))
        return await original(sql, *args)

    app.access_log.pool = type("Pool", (), {"execute": staticmethod(counted)})()
    await asyncio.gather(*(app.get_person(p.person_id) for p in people))
    assert sum(statements) == 20 and len(statements) < 20
    app.access_log.pool = pool
    logged = [await app.access_log.of_person(p.person_id) for p in people]
    assert all(len(entries) == 1 for entries in logged)
