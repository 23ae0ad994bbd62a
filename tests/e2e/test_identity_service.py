"""The identity service over real gRPC: every command and query, the feed, and the
status codes and field names clients get for bad input."""

from __future__ import annotations

import asyncio
import contextlib
from uuid import UUID, uuid4

import grpc
import pytest
from throughline.common.v1.date_pb2 import Date
from throughline.feed.v1 import feed_pb2, feed_pb2_grpc
from throughline.identity.v1 import identity_pb2 as pb
from throughline.identity.v1 import identity_pb2_grpc

from libs.chassis.auth import TokenVerifier
from libs.eventstore import create_pool
from services.identity.bootstrap import bootstrap
from services.identity.grpc_api import build_server
from services.identity.search_index import BROAD_CANDIDATE_LIMIT, CANDIDATE_LIMIT
from tests.conftest import new_schema_name
from tests.e2e.rpc_details import details_of, violations_of

SECRET = "identity-e2e-secret-long-enough-for-hs256"
PNC = pb.Identifier(type=pb.IDENTIFIER_TYPE_PNC, value="12/394773H")
NOMS = pb.Identifier(type=pb.IDENTIFIER_TYPE_NOMS, value="A1234AA")


@contextlib.asynccontextmanager
async def identity_service(pool, roles=("identity.write", "identity.merge", "feed.read")):
    """A running identity service on its own schema, and a client for it."""
    identity = await bootstrap(pool, schema=new_schema_name("identity"), cipher_key="")
    identity.start_projection()
    verifier = TokenVerifier(SECRET)
    server = build_server(identity, verifier)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    token = verifier.mint("clerk:ann", roles)
    try:
        yield Client(
            identity_pb2_grpc.IdentityServiceStub(channel), channel, token, verifier, identity
        )
    finally:
        await channel.close()
        await server.stop(0)
        await identity.close()


@pytest.fixture
async def client(pool):
    async with identity_service(pool) as client:
        yield client


class Client:
    def __init__(self, stub, channel, token, verifier, identity):
        self.stub = stub
        self.channel = channel
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.verifier = verifier
        self.identity = identity  # the service behind it, to check what it recorded

    def __getattr__(self, method):
        rpc = getattr(self.stub, method)

        async def call(request, metadata=None):
            return await rpc(request, metadata=metadata or self.metadata)

        return call


def registration(given="Ann", family="Example", dob=(1980, 5, 17), ids=(), command_id=None):
    return pb.RegisterPersonRequest(
        command_id=command_id or str(uuid4()),
        name=pb.Name(given_names=given, family_name=family),
        date_of_birth=Date(year=dob[0], month=dob[1], day=dob[2]),
        sex=pb.SEX_FEMALE,
        identifiers=list(ids),
    )


async def failure(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


async def test_register_then_get_by_id_and_by_identifier_in_any_form(client):
    registered = await client.RegisterPerson(registration(ids=[PNC]))
    by_id = await client.GetPerson(pb.GetPersonRequest(person_id=registered.person_id))
    assert by_id.person.name.family_name == "Example"
    assert [(i.type, i.value) for i in by_id.person.identifiers] == [
        (pb.IDENTIFIER_TYPE_PNC, "2012/0394773H")
    ]
    long_form = pb.Identifier(type=pb.IDENTIFIER_TYPE_PNC, value="2012/0394773H")
    by_pnc = await client.GetPerson(pb.GetPersonRequest(identifier=long_form))
    assert by_pnc.person.person_id == registered.person_id


async def test_a_retried_registration_returns_the_same_person(client):
    command = str(uuid4())
    first = await client.RegisterPerson(registration(command_id=command))
    again = await client.RegisterPerson(registration(command_id=command))
    assert again.person_id == first.person_id and again.position == first.position


async def test_a_command_id_sent_again_with_another_person_is_refused(client):
    # Answering with the first person's id would file the second person's records
    # under someone else.
    command = str(uuid4())
    first = await client.RegisterPerson(registration(command_id=command))
    error = await failure(
        client.RegisterPerson(registration(given="Someone Else", command_id=command))
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert dict(details_of(error)["ErrorInfo"].metadata) == {"kind": "command", "key": command}
    assert [field for field, _ in violations_of(error)] == ["command_id"]
    error = await failure(
        client.AddAlias(
            pb.AddAliasRequest(
                command_id=command,
                person_id=first.person_id,
                alias=pb.Name(given_names="Annie", family_name="Example"),
            )
        )
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    person = await client.GetPerson(pb.GetPersonRequest(person_id=first.person_id))
    assert person.person.name.given_names == "Ann" and not person.person.aliases


async def test_bad_registrations_name_every_field_and_rule(client):
    request = pb.RegisterPersonRequest(
        command_id="not-a-uuid",
        name=pb.Name(given_names=" ", family_name="Example"),
        date_of_birth=Date(year=2999, month=1, day=1),
        identifiers=[pb.Identifier(type=pb.IDENTIFIER_TYPE_PNC, value="12/394773A")],
    )
    error = await failure(client.RegisterPerson(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations_of(error) == [
        ("command_id", "must be a UUID"),
        ("name.given_names", "must not be empty"),
        ("date_of_birth", "must not be in the future"),
        ("sex", "must be set"),
        ("identifiers[0].value", "PNC check letter is A but must be H"),
    ]
    impossible = registration()
    impossible.date_of_birth.CopyFrom(Date(year=1980, month=2, day=30))
    error = await failure(client.RegisterPerson(impossible))
    assert violations_of(error) == [("date_of_birth", "must be a real calendar date")]


async def test_enum_numbers_this_service_does_not_know_are_invalid_not_unknown(client):
    # proto3 enums are open: a newer or careless client can send any number.
    request = registration(ids=[NOMS])
    request.sex = 99
    request.identifiers[0].type = 42
    error = await failure(client.RegisterPerson(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations_of(error) == [
        ("sex", "must be one of SEX_MALE, SEX_FEMALE, SEX_NOT_KNOWN, SEX_NOT_SPECIFIED"),
        ("identifiers[0].type", "42 is not an identifier type this service knows"),
    ]


async def test_oversized_lists_and_reasons_are_refused_before_anything_is_written(client):
    request = registration()
    request.aliases.extend(pb.Name(given_names=f"A{n}", family_name="Example") for n in range(101))
    request.identifiers.extend(
        pb.Identifier(type=pb.IDENTIFIER_TYPE_BOOKING, value=f"{n:05d}A") for n in range(51)
    )
    error = await failure(client.RegisterPerson(request))
    assert violations_of(error) == [
        ("identifiers", "must have at most 50 entries"),
        ("aliases", "must have at most 100 entries"),
    ]
    person = await client.RegisterPerson(registration())
    error = await failure(
        client.ChangeName(
            pb.ChangeNameRequest(
                command_id=str(uuid4()),
                person_id=person.person_id,
                name=pb.Name(given_names="Anne", family_name="Example"),
                reason="x" * 2001,
            )
        )
    )
    assert violations_of(error) == [("reason", "must be at most 2000 characters")]
    search = pb.SearchPeopleRequest(
        identifiers=[pb.Identifier(type=pb.IDENTIFIER_TYPE_NOMS, value="A1234AA")] * 51
    )
    error = await failure(client.SearchPeople(search))
    assert violations_of(error) == [("identifiers", "must have at most 50 entries")]
    search = pb.SearchPeopleRequest(name=pb.Name(family_name="x" * 201))
    error = await failure(client.SearchPeople(search))
    assert violations_of(error) == [("name.family_name", "must be at most 200 characters")]


async def test_an_identifier_held_by_someone_else_is_already_exists_naming_the_holder(client):
    holder = await client.RegisterPerson(registration(ids=[NOMS]))
    other = await client.RegisterPerson(registration(given="Bob"))
    error = await failure(
        client.RecordIdentifier(
            pb.RecordIdentifierRequest(
                command_id=str(uuid4()), person_id=other.person_id, identifier=NOMS
            )
        )
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert details_of(error)["ErrorInfo"].metadata["holder"] == holder.person_id


async def test_unknown_people_are_not_found(client):
    error = await failure(client.GetPerson(pb.GetPersonRequest(person_id=str(uuid4()))))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await failure(client.GetPerson(pb.GetPersonRequest(identifier=NOMS)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await failure(
        client.AddAlias(
            pb.AddAliasRequest(
                command_id=str(uuid4()),
                person_id=str(uuid4()),
                alias=pb.Name(given_names="A", family_name="B"),
            )
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_corrections_alias_and_death(client):
    person = await client.RegisterPerson(registration())
    pid = person.person_id

    def command(**fields):
        return {"command_id": str(uuid4()), "person_id": pid, **fields}

    await client.ChangeName(
        pb.ChangeNameRequest(
            **command(name=pb.Name(given_names="Ann", family_name="Wed"), reason="marriage")
        )
    )
    await client.CorrectDateOfBirth(
        pb.CorrectDateOfBirthRequest(
            **command(date_of_birth=Date(year=1980, month=7, day=15), reason="typo")
        )
    )
    await client.AddAlias(
        pb.AddAliasRequest(**command(alias=pb.Name(given_names="Annie", family_name="X")))
    )
    await client.AddAlias(
        pb.AddAliasRequest(**command(alias=pb.Name(given_names="Annie", family_name="Y")))
    )
    await client.RecordDeath(
        pb.RecordDeathRequest(**command(date_of_death=Date(year=2026, month=1, day=2)))
    )
    await client.RetireAlias(
        pb.RetireAliasRequest(
            **command(alias=pb.Name(given_names="Annie", family_name="Y"), reason="error")
        )
    )
    await client.CorrectSex(pb.CorrectSexRequest(**command(sex=pb.SEX_MALE, reason="error")))
    got = (await client.GetPerson(pb.GetPersonRequest(person_id=pid))).person
    assert got.name.family_name == "Wed" and got.date_of_birth.month == 7
    assert {a.family_name for a in got.aliases} == {"Example", "X"}
    assert got.date_of_death.year == 2026
    assert got.sex == pb.SEX_MALE
    error = await failure(
        client.RetireAlias(
            pb.RetireAliasRequest(
                **command(alias=pb.Name(given_names="Annie", family_name="Z"), reason="error")
            )
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details_of(error)["ErrorInfo"].metadata["rule"] == "alias_not_held"
    error = await failure(client.CorrectSex(pb.CorrectSexRequest(**command(reason="error"))))
    assert violations_of(error) == [("sex", "must be set")]
    error = await failure(
        client.CorrectDateOfBirth(
            pb.CorrectDateOfBirthRequest(**command(date_of_birth=Date(year=1980, month=7, day=16)))
        )
    )
    assert violations_of(error) == [("reason", "must say why (it is kept with the record)")]
    error = await failure(
        client.RecordDeath(
            pb.RecordDeathRequest(**command(date_of_death=Date(year=2026, month=1, day=3)))
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

    for bad, violation in (
        ({}, ("correction", "set date_of_death, or recorded_in_error to true")),
        (
            {"recorded_in_error": False},
            ("correction", "set date_of_death, or recorded_in_error to true"),
        ),
        (
            {"date_of_death": Date(year=2999, month=1, day=1)},
            ("date_of_death", "must not be in the future"),
        ),
    ):
        error = await failure(
            client.CorrectDeath(pb.CorrectDeathRequest(**command(reason="x", **bad)))
        )
        assert violations_of(error) == [violation]
    await client.CorrectDeath(
        pb.CorrectDeathRequest(**command(recorded_in_error=True, reason="wrong person"))
    )
    got = (await client.GetPerson(pb.GetPersonRequest(person_id=pid))).person
    assert not got.HasField("date_of_death")
    error = await failure(
        client.CorrectDeath(
            pb.CorrectDeathRequest(**command(recorded_in_error=True, reason="again"))
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details_of(error)["ErrorInfo"].metadata["rule"] == "death_not_recorded"


async def test_merge_redirects_refuses_self_and_circular_merges_and_unmerges(client):
    survivor = await client.RegisterPerson(registration(ids=[NOMS]))
    duplicate = await client.RegisterPerson(registration(given="Anne", ids=[PNC]))

    def merge(s, d, reason="same fingerprints"):
        return pb.MergePeopleRequest(
            command_id=str(uuid4()), survivor_person_id=s, duplicate_person_id=d, reason=reason
        )

    error = await failure(client.MergePeople(merge(survivor.person_id, survivor.person_id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details_of(error)["ErrorInfo"].metadata["rule"] == "merge_into_self"

    await client.MergePeople(merge(survivor.person_id, duplicate.person_id))
    redirected = await client.GetPerson(pb.GetPersonRequest(person_id=duplicate.person_id))
    assert redirected.redirected and redirected.person.person_id == survivor.person_id
    assert redirected.redirected_from_person_id == duplicate.person_id
    error = await failure(client.MergePeople(merge(duplicate.person_id, survivor.person_id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

    def unmerge(s, d):
        return pb.UnmergePeopleRequest(
            command_id=str(uuid4()), survivor_person_id=s, duplicate_person_id=d, reason="two"
        )

    # Merged on into a third record, the survivor must be unmerged from it first.
    third = await client.RegisterPerson(registration(given="Annie"))
    await client.MergePeople(merge(third.person_id, survivor.person_id))
    error = await failure(client.UnmergePeople(unmerge(survivor.person_id, duplicate.person_id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details_of(error)["ErrorInfo"].metadata["rule"] == "survivor_merged"
    await client.UnmergePeople(unmerge(third.person_id, survivor.person_id))

    await client.UnmergePeople(unmerge(survivor.person_id, duplicate.person_id))
    back = await client.GetPerson(pb.GetPersonRequest(identifier=PNC))
    assert back.person.person_id == duplicate.person_id and not back.redirected


async def test_merging_needs_the_merge_role(client):
    a = await client.RegisterPerson(registration())
    b = await client.RegisterPerson(registration())
    clerk = (("authorization", f"Bearer {client.verifier.mint('clerk:bo', ['identity.write'])}"),)
    error = await failure(
        client.MergePeople(
            pb.MergePeopleRequest(
                command_id=str(uuid4()),
                survivor_person_id=a.person_id,
                duplicate_person_id=b.person_id,
                reason="same",
            ),
            metadata=clerk,
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_search_ranks_candidates_with_reasons_and_duplicates_respect_overrides(client):
    target = await client.RegisterPerson(
        registration(given="Martha", family="Kowalski", dob=(1979, 3, 12))
    )
    twin = await client.RegisterPerson(
        registration(given="Maria", family="Kowalski", dob=(1979, 3, 12))
    )
    copy = await client.RegisterPerson(
        registration(given="Marta", family="Kowalski", dob=(1979, 3, 21), ids=[PNC])
    )
    found = await client.SearchPeople(
        pb.SearchPeopleRequest(
            name=pb.Name(given_names="Marhta", family_name="Kowalsky"),
            date_of_birth=Date(year=1979, month=3, day=12),
            min_position=copy.position,
        )
    )
    assert found.candidates[0].person_id == target.person_id
    assert any("Jaro-Winkler" in r for r in found.candidates[0].reasons)
    by_pnc = await client.SearchPeople(pb.SearchPeopleRequest(identifiers=[PNC]))
    assert by_pnc.candidates[0].person_id == copy.person_id
    assert "exact PNC" in by_pnc.candidates[0].reasons

    duplicates = await client.ListPossibleDuplicates(
        pb.ListPossibleDuplicatesRequest(person_id=target.person_id)
    )
    ids = [c.person_id for c in duplicates.candidates]
    assert copy.person_id in ids and twin.person_id not in ids
    marked = await client.MarkNotDuplicate(
        pb.MarkNotDuplicateRequest(
            command_id=str(uuid4()),
            person_id=target.person_id,
            other_person_id=copy.person_id,
            reason="checked in person",
        )
    )
    after = await client.ListPossibleDuplicates(
        pb.ListPossibleDuplicatesRequest(person_id=target.person_id, min_position=marked.position)
    )
    assert copy.person_id not in [c.person_id for c in after.candidates]


async def test_an_empty_search_is_invalid(client):
    error = await failure(client.SearchPeople(pb.SearchPeopleRequest(limit=500)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations_of(error)[0][0] == "limit"


async def test_a_given_name_alone_is_too_broad_to_search_by(client):
    error = await failure(
        client.SearchPeople(pb.SearchPeopleRequest(name=pb.Name(given_names="Ann")))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations_of(error) == [
        (
            "name.family_name",
            "a given name alone is too broad to search by: add the family name, a date of "
            "birth or an identifier",
        )
    ]
    written = await client.RegisterPerson(registration(given="Ann"))
    found = await client.SearchPeople(
        pb.SearchPeopleRequest(
            name=pb.Name(given_names="Ann"),
            date_of_birth=Date(year=1980, month=5, day=17),
            min_position=written.position,
        )
    )
    assert written.person_id in [c.person_id for c in found.candidates]


async def test_a_search_says_when_more_people_match_than_it_reads(client):
    for n in range(BROAD_CANDIDATE_LIMIT + 1):
        written = await client.RegisterPerson(
            registration(given=f"Ann{chr(97 + n // 26)}{chr(97 + n % 26)}", family="Nowak")
        )
    broad = await client.SearchPeople(
        pb.SearchPeopleRequest(name=pb.Name(family_name="Nowak"), min_position=written.position)
    )
    assert broad.incomplete and len(broad.candidates) == 10
    narrow = await client.SearchPeople(
        pb.SearchPeopleRequest(
            name=pb.Name(given_names="Annah", family_name="Nowak"),
            date_of_birth=Date(year=1980, month=5, day=17),
        )
    )
    assert not narrow.incomplete and narrow.candidates[0].name.given_names == "Annah"


async def test_a_duplicates_check_says_when_more_people_match_than_it_reads(client):
    person = await client.RegisterPerson(registration())
    # Namesakes born the same day, each with another given name (all letters).
    namesakes = [f"Ann{chr(97 + n // 26 % 26)}{chr(97 + n % 26)}" for n in range(CANDIDATE_LIMIT)]
    written = await asyncio.gather(
        *(client.RegisterPerson(registration(given=given)) for given in namesakes)
    )
    found = await client.ListPossibleDuplicates(
        pb.ListPossibleDuplicatesRequest(
            person_id=person.person_id,
            threshold=0.01,
            min_position=max(w.position for w in written),
        )
    )
    assert found.incomplete and len(found.candidates) == 10


async def test_a_search_for_a_position_not_yet_written_is_refused_at_once(client):
    written = await client.RegisterPerson(registration())
    request = pb.SearchPeopleRequest(
        name=pb.Name(family_name="Example"), min_position=written.position + 1000
    )
    error = await failure(client.SearchPeople(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    (field, rule), *_ = violations_of(error)
    assert field == "min_position" and f"newest: {written.position}" in rule


async def test_merge_decisions_record_who_decided_and_why(client):
    first = await client.RegisterPerson(registration(ids=[NOMS]))
    second = await client.RegisterPerson(registration(given="Anne", ids=[PNC]))
    third = await client.RegisterPerson(registration(given="Annie"))
    supervisor = (
        ("authorization", f"Bearer {client.verifier.mint('supervisor:bo', ['identity.merge'])}"),
    )
    ids = {"survivor_person_id": first.person_id, "duplicate_person_id": second.person_id}
    await client.MergePeople(
        pb.MergePeopleRequest(command_id=str(uuid4()), reason="same prints", **ids),
        metadata=supervisor,
    )
    await client.UnmergePeople(
        pb.UnmergePeopleRequest(command_id=str(uuid4()), reason="prints misread", **ids),
        metadata=supervisor,
    )
    await client.MarkNotDuplicate(
        pb.MarkNotDuplicateRequest(
            command_id=str(uuid4()),
            person_id=first.person_id,
            other_person_id=third.person_id,
            reason="twins",
        ),
        metadata=supervisor,
    )
    feed = feed_pb2_grpc.EventFeedServiceStub(client.channel)
    response = await feed.ReadEvents(feed_pb2.ReadEventsRequest(), metadata=client.metadata)
    decided = {}
    for envelope in response.events:
        kind = envelope.event_type.rsplit(".", 1)[1]
        if kind in ("Registered", "Claimed"):  # the clerk's registrations
            assert envelope.actor == "clerk:ann"
        elif kind == "Reclaimed":  # identifiers moving with a merge and back
            assert envelope.actor == "supervisor:bo"
        else:
            event = pb.PersonEvent()
            assert envelope.payload.Unpack(event)
            decided.setdefault(kind, []).append((envelope.actor, event.reason))
    assert decided == {
        "MergedInto": [("supervisor:bo", "same prints")],
        "DuplicateAbsorbed": [("supervisor:bo", "same prints")],
        "Unmerged": [("supervisor:bo", "prints misread")],
        "DuplicateReleased": [("supervisor:bo", "prints misread")],
        "NotDuplicateMarked": [("supervisor:bo", "twins"), ("supervisor:bo", "twins")],
    }


async def test_the_feed_carries_typed_person_events_with_their_facts(client):
    person = await client.RegisterPerson(registration(ids=[PNC]))
    await client.CorrectDateOfBirth(
        pb.CorrectDateOfBirthRequest(
            command_id=str(uuid4()),
            person_id=person.person_id,
            date_of_birth=Date(year=1980, month=7, day=15),
            reason="typo",
        )
    )
    await client.RecordDeath(
        pb.RecordDeathRequest(
            command_id=str(uuid4()),
            person_id=person.person_id,
            date_of_death=Date(year=2026, month=1, day=2),
        )
    )
    await client.CorrectDeath(
        pb.CorrectDeathRequest(
            command_id=str(uuid4()),
            person_id=person.person_id,
            recorded_in_error=True,
            reason="recorded on the wrong person",
        )
    )
    await client.CorrectSex(
        pb.CorrectSexRequest(
            command_id=str(uuid4()), person_id=person.person_id, sex=pb.SEX_MALE, reason="error"
        )
    )
    feed = feed_pb2_grpc.EventFeedServiceStub(client.channel)
    response = await feed.ReadEvents(feed_pb2.ReadEventsRequest(), metadata=client.metadata)
    kinds = [e.event_type for e in response.events]
    assert kinds == [
        "throughline.identity.v1.PersonEvent.Registered",
        "throughline.identity.v1.IdentifierClaimEvent.Claimed",
        "throughline.identity.v1.PersonEvent.DateOfBirthCorrected",
        "throughline.identity.v1.PersonEvent.DeathRecorded",
        "throughline.identity.v1.PersonEvent.DeathCorrected",
        "throughline.identity.v1.PersonEvent.SexCorrected",
    ]
    sex_corrected = pb.PersonEvent()
    assert response.events[5].payload.Unpack(sex_corrected)
    assert (sex_corrected.previous_sex, sex_corrected.sex) == (pb.SEX_FEMALE, pb.SEX_MALE)
    corrected = pb.PersonEvent()
    assert response.events[2].payload.Unpack(corrected)
    assert (corrected.previous_date_of_birth.month, corrected.date_of_birth.month) == (5, 7)
    assert corrected.reason == "typo"
    withdrawn = pb.PersonEvent()
    assert response.events[4].payload.Unpack(withdrawn)
    assert withdrawn.previous_date_of_death.day == 2
    assert not withdrawn.HasField("date_of_death")
    assert not withdrawn.HasField("previous_date_of_birth")
    assert withdrawn.reason == "recorded on the wrong person"
    assert all(e.actor == "clerk:ann" for e in response.events)
    claimed = pb.IdentifierClaimEvent()
    assert response.events[1].payload.Unpack(claimed)
    assert claimed.identifier.value == "2012/0394773H" and claimed.person_id == person.person_id


async def test_a_record_as_known_at_a_past_moment_for_a_serious_case_review(client):
    person = await client.RegisterPerson(registration(ids=[PNC]))
    pid = person.person_id
    await client.RecordDeath(
        pb.RecordDeathRequest(
            command_id=str(uuid4()), person_id=pid, date_of_death=Date(year=2026, month=1, day=2)
        )
    )
    await client.CorrectDeath(
        pb.CorrectDeathRequest(
            command_id=str(uuid4()), person_id=pid, recorded_in_error=True, reason="wrong person"
        )
    )
    now = await client.GetPersonHistory(pb.GetPersonHistoryRequest(person_id=pid))
    assert [e.event_type.rsplit(".", 1)[1] for e in now.events] == [
        "Registered",
        "DeathRecorded",
        "DeathCorrected",
    ]
    assert not now.person.HasField("date_of_death") and now.later_events == 0
    assert all(e.actor == "clerk:ann" and e.stream_id == pid for e in now.events)

    death = now.events[1]
    then = await client.GetPersonHistory(
        pb.GetPersonHistoryRequest(person_id=pid, known_at=death.recorded_at)
    )
    assert len(then.events) == 2 and then.later_events == 1
    assert then.person.date_of_death.year == 2026 and then.person.version == 2
    recorded = pb.PersonEvent()
    assert then.events[1].payload.Unpack(recorded) and recorded.date_of_death.day == 2

    error = await failure(
        client.GetPersonHistory(
            pb.GetPersonHistoryRequest(person_id=pid, known_at={"seconds": -(10**12)})
        )
    )
    assert violations_of(error) == [("known_at", "must be a time between the years 1 and 9999")]
    error = await failure(client.GetPersonHistory(pb.GetPersonHistoryRequest(person_id="x")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = await failure(
        client.GetPersonHistory(pb.GetPersonHistoryRequest(person_id=str(uuid4())))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    reader = client.verifier.mint("reviewer:sam", ["identity.read"])
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    allowed = await client.GetPersonHistory(
        pb.GetPersonHistoryRequest(person_id=pid),
        metadata=(("authorization", f"Bearer {reader}"), ("traceparent", parent)),
    )
    assert len(allowed.events) == 3
    # The reviewer's reading is in the access log under their token's subject and trace.
    logged = await client.identity.application.access_log.of_person(UUID(pid))
    assert (logged[-1].actor, logged[-1].action, logged[-1].disclosed) == (
        "reviewer:sam",
        "get_person_history",
        (UUID(pid),),
    )
    assert logged[-1].trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"

    duplicate = await client.RegisterPerson(registration(given="Anne"))
    await client.MergePeople(
        pb.MergePeopleRequest(
            command_id=str(uuid4()),
            survivor_person_id=pid,
            duplicate_person_id=duplicate.person_id,
            reason="same fingerprints",
        )
    )
    merged = await client.GetPersonHistory(
        pb.GetPersonHistoryRequest(person_id=duplicate.person_id)
    )
    assert merged.merged_into_person_id == pid
    assert merged.events[-1].event_type.endswith("PersonEvent.MergedInto")


async def test_a_lookup_answers_as_the_record_stood_at_a_past_moment(client):
    """What a lookup by NOMS number made on a past day would have shown: who held it, under
    what name, and where a merged record redirected, as recorded by then."""

    async def recorded_at(person_id):
        history = await client.GetPersonHistory(pb.GetPersonHistoryRequest(person_id=person_id))
        return history.events[-1].recorded_at

    first = await client.RegisterPerson(registration(ids=[NOMS]))
    registered = await recorded_at(first.person_id)
    await client.ChangeName(
        pb.ChangeNameRequest(
            command_id=str(uuid4()),
            person_id=first.person_id,
            name=pb.Name(given_names="Ann", family_name="Wed"),
            reason="marriage",
        )
    )
    await client.RetireIdentifier(
        pb.RetireIdentifierRequest(
            command_id=str(uuid4()), person_id=first.person_id, identifier=NOMS, reason="typo"
        )
    )
    second = await client.RegisterPerson(registration(given="Bea", ids=[NOMS]))
    survivor = await client.RegisterPerson(registration(given="Bea", family="Other"))
    before_merge = await recorded_at(survivor.person_id)
    await client.MergePeople(
        pb.MergePeopleRequest(
            command_id=str(uuid4()),
            survivor_person_id=survivor.person_id,
            duplicate_person_id=second.person_id,
            reason="same fingerprints",
        )
    )

    then = await client.GetPerson(pb.GetPersonRequest(identifier=NOMS, known_at=registered))
    assert then.person.person_id == first.person_id
    assert then.person.name.family_name == "Example" and not then.redirected
    at_merge = await client.GetPerson(pb.GetPersonRequest(identifier=NOMS, known_at=before_merge))
    assert at_merge.person.person_id == second.person_id and not at_merge.redirected
    now = await client.GetPerson(pb.GetPersonRequest(identifier=NOMS))
    assert now.person.person_id == survivor.person_id  # the merge moved the identifier
    merged = await client.GetPerson(pb.GetPersonRequest(person_id=second.person_id))
    assert merged.redirected and merged.person.person_id == survivor.person_id
    unmerged_then = await client.GetPerson(
        pb.GetPersonRequest(person_id=second.person_id, known_at=before_merge)
    )
    assert not unmerged_then.redirected and unmerged_then.person.person_id == second.person_id
    old_name = await client.GetPerson(
        pb.GetPersonRequest(person_id=first.person_id, known_at=registered)
    )
    assert old_name.person.name.family_name == "Example" and old_name.person.version == 1

    not_yet = await failure(
        client.GetPerson(pb.GetPersonRequest(person_id=second.person_id, known_at=registered))
    )
    assert not_yet.code() == grpc.StatusCode.NOT_FOUND
    assert "was not on the record at" in not_yet.details()
    info = details_of(not_yet)["ErrorInfo"].metadata
    assert info["key"] == second.person_id and info["known_at"].startswith(
        registered.ToDatetime().date().isoformat()
    )
    error = await failure(
        client.GetPerson(
            pb.GetPersonRequest(person_id=first.person_id, known_at={"seconds": -(10**12)})
        )
    )
    assert violations_of(error) == [("known_at", "must be a time between the years 1 and 9999")]


async def test_a_long_history_is_read_in_pages_as_known_at_one_moment(client):
    person = await client.RegisterPerson(registration())
    pid = person.person_id
    for n in range(4):
        await client.AddAlias(
            pb.AddAliasRequest(
                command_id=str(uuid4()),
                person_id=pid,
                alias=pb.Name(given_names=f"Alias{n}", family_name="Example"),
            )
        )
    whole = await client.GetPersonHistory(pb.GetPersonHistoryRequest(person_id=pid))
    assert len(whole.events) == 5 and whole.next_after_version == 0
    moment = whole.events[3].recorded_at  # the record with three aliases

    pages, after = [], 0
    while True:
        page = await client.GetPersonHistory(
            pb.GetPersonHistoryRequest(person_id=pid, known_at=moment, after_version=after, limit=2)
        )
        pages.append([e.stream_version for e in page.events])
        # Every page describes the person as known at the moment, not as of its page.
        assert [a.given_names for a in page.person.aliases] == ["Alias0", "Alias1", "Alias2"]
        assert page.later_events == 1
        if not page.next_after_version:
            break
        after = page.next_after_version
    assert pages == [[1, 2], [3, 4]]

    error = await failure(
        client.GetPersonHistory(pb.GetPersonHistoryRequest(person_id=pid, limit=1001))
    )
    assert violations_of(error) == [("limit", "must be between 1 and 1000, or 0 for 100")]
    error = await failure(
        client.GetPersonHistory(pb.GetPersonHistoryRequest(person_id=pid, after_version=-1))
    )
    assert violations_of(error) == [
        ("after_version", "must be 0 or a version of the person's stream")
    ]
    beyond = await client.GetPersonHistory(
        pb.GetPersonHistoryRequest(person_id=pid, after_version=5)
    )
    assert list(beyond.events) == [] and beyond.next_after_version == 0
    assert len(beyond.person.aliases) == 4


async def test_each_message_of_the_event_feed_is_logged_with_the_system_that_read_it(client):
    first = await client.RegisterPerson(registration(ids=[PNC]))
    second = await client.RegisterPerson(registration(given="Bea"))
    system = client.verifier.mint("system:ndelius", ["feed.read"])
    metadata = (("authorization", f"Bearer {system}"),)
    feed = feed_pb2_grpc.EventFeedServiceStub(client.channel)
    read = await feed.ReadEvents(feed_pb2.ReadEventsRequest(limit=2), metadata=metadata)
    assert [e.position for e in read.events] == [1, 2]  # the first person and their PNC
    call = feed.SubscribeEvents(feed_pb2.SubscribeEventsRequest(after=2), metadata=metadata)
    streamed = await call.read()
    call.cancel()
    assert [e.stream_id for e in streamed.events] == [second.person_id]

    log = client.identity.application.access_log
    (read_entry,) = await log.of_person(UUID(first.person_id))
    assert (read_entry.actor, read_entry.action, read_entry.asked) == (
        "system:ndelius",
        "read_events",
        {"positions": "1..2"},
    )
    assert UUID(first.person_id) in read_entry.disclosed
    (streamed_entry,) = await log.of_person(UUID(second.person_id))
    assert (streamed_entry.action, streamed_entry.asked) == (
        "subscribe_events",
        {"positions": "3..3"},
    )


async def test_concurrent_registrations_of_one_identifier_leave_one_holder(client):
    calls = [client.RegisterPerson(registration(given=f"P{i}", ids=[NOMS])) for i in range(5)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert sum(not isinstance(o, Exception) for o in outcomes) == 1
    assert {o.code() for o in outcomes if isinstance(o, Exception)} == {
        grpc.StatusCode.ALREADY_EXISTS
    }


async def until_available(call, request, client, attempts=5):
    """Calls as a client does after an outage: UNAVAILABLE is retried with the same
    request (so the same command id). No pause is needed between attempts: a failed
    attempt has already given up its broken connection, and the next takes a new one."""
    for _ in range(attempts - 1):
        try:  # a call that hangs fails the test rather than stalling the suite
            return await asyncio.wait_for(getattr(client, call)(request), 10)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
    return await asyncio.wait_for(getattr(client, call)(request), 10)


async def test_the_service_carries_on_after_postgresql_ends_every_session(pool, test_database_url):
    """As after a PostgreSQL restart or failover: every session the service holds
    (writer, LISTEN, index, queries) ends at once. Writes, the search index and reads
    carry on, and a retried command is still recorded once."""
    name = f"identity-outage-{uuid4().hex[:8]}"
    own_pool = await create_pool(test_database_url, application_name=name)
    try:
        async with identity_service(own_pool) as client:
            before = await client.RegisterPerson(registration(family="Before", ids=[PNC]))
            await client.SearchPeople(  # the index is running and has listened
                pb.SearchPeopleRequest(
                    name=pb.Name(family_name="Before"), min_position=before.position
                )
            )
            ended = await pool.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1",
                name,
            )
            assert ended >= 2  # the writer's and the listener's sessions at least

            request = registration(family="After", ids=[NOMS])
            after = await until_available("RegisterPerson", request, client)
            again = await client.RegisterPerson(request)
            assert (again.person_id, again.position) == (after.person_id, after.position)
            found = await until_available(
                "SearchPeople",
                pb.SearchPeopleRequest(
                    name=pb.Name(given_names="Ann", family_name="After"),
                    date_of_birth=Date(year=1980, month=5, day=17),
                    min_position=after.position,
                ),
                client,
            )
            assert found.candidates[0].person_id == after.person_id
            got = await until_available(
                "GetPerson", pb.GetPersonRequest(person_id=before.person_id), client
            )
            assert got.person.name.family_name == "Before"
            feed = feed_pb2_grpc.EventFeedServiceStub(client.channel)
            events = await feed.ReadEvents(feed_pb2.ReadEventsRequest(), metadata=client.metadata)
            kinds = [e.event_type.rsplit(".", 1)[1] for e in events.events]
            assert kinds == ["Registered", "Claimed", "Registered", "Claimed"]
    finally:
        await own_pool.close()
