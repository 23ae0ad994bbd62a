"""The IdentityService servicer: validate, translate, call the application, translate back."""

from __future__ import annotations

from throughline.identity.v1 import identity_pb2 as pb
from throughline.identity.v1 import identity_pb2_grpc

from libs.chassis.auth import AccessPolicy, TokenVerifier
from libs.chassis.feed import EventFeedServicer, Translator, envelope
from libs.chassis.server import Registration, Server
from services.identity.application import IdentityApplication, PersonView
from services.identity.bootstrap import Identity
from services.identity.domain import MAX_NAME_LENGTH, Name
from services.identity.matching import DEFAULT_THRESHOLD
from services.identity.translate import (
    MAX_ALIASES,
    MAX_IDENTIFIERS,
    Violations,
    birth_date_field,
    candidate_pb,
    each,
    event_translator,
    identifier_field,
    limit_field,
    moment_field,
    name_field,
    past_date_field,
    person_pb,
    position_field,
    reason_field,
    sex_field,
    uuid_field,
    version_field,
)

SERVICE = pb.DESCRIPTOR.services_by_name["IdentityService"].full_name
_WRITE = frozenset({"identity.write"})
_MERGE = frozenset({"identity.merge"})
_READ = frozenset({"identity.read", "identity.write"})
POLICY = AccessPolicy(
    {
        f"/{SERVICE}/": _WRITE,
        f"/{SERVICE}/MergePeople": _MERGE,
        f"/{SERVICE}/UnmergePeople": _MERGE,
        f"/{SERVICE}/MarkNotDuplicate": _MERGE,
        f"/{SERVICE}/GetPerson": _READ,
        f"/{SERVICE}/GetPersonHistory": _READ,
        f"/{SERVICE}/SearchPeople": _READ,
        f"/{SERVICE}/ListPossibleDuplicates": _READ,
        "/throughline.feed.v1.EventFeedService/": frozenset({"feed.read"}),
    }
)


def _view_pb(view: PersonView) -> pb.GetPersonResponse:
    return pb.GetPersonResponse(
        person=person_pb(view.person),
        redirected=view.redirected_from is not None,
        redirected_from_person_id=str(view.redirected_from or ""),
    )


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(self, application: IdentityApplication, translate: Translator) -> None:
        self.app = application
        self.translate = translate  # stored events as the feed carries them

    async def RegisterPerson(self, request, context):
        v = Violations()
        command_id = uuid_field(request.command_id, "command_id", v)
        name = name_field(request.name, "name", v)
        date_of_birth = birth_date_field(request.date_of_birth, "date_of_birth", v)
        sex = sex_field(request.sex, "sex", v)
        identifiers = each(
            request.identifiers, "identifiers", v, identifier_field, most=MAX_IDENTIFIERS
        )
        aliases = each(request.aliases, "aliases", v, name_field, most=MAX_ALIASES)
        v.raise_if_any()
        written = await self.app.register_person(
            command_id, name, date_of_birth, sex, identifiers, aliases
        )
        return pb.RegisterPersonResponse(
            person_id=str(written.person_id), position=written.position
        )

    async def RecordIdentifier(self, request, context):
        v = Violations()
        command_id = uuid_field(request.command_id, "command_id", v)
        person_id = uuid_field(request.person_id, "person_id", v)
        identifier = identifier_field(request.identifier, "identifier", v)
        v.raise_if_any()
        written = await self.app.record_identifier(command_id, person_id, identifier)
        return pb.RecordIdentifierResponse(position=written.position)

    async def RetireIdentifier(self, request, context):
        v = Violations()
        command_id = uuid_field(request.command_id, "command_id", v)
        person_id = uuid_field(request.person_id, "person_id", v)
        identifier = identifier_field(request.identifier, "identifier", v)
        reason = reason_field(request.reason, "reason", v)
        v.raise_if_any()
        written = await self.app.retire_identifier(command_id, person_id, identifier, reason)
        return pb.RetireIdentifierResponse(position=written.position)

    async def AddAlias(self, request, context):
        v = Violations()
        command_id = uuid_field(request.command_id, "command_id", v)
        person_id = uuid_field(request.person_id, "person_id", v)
        alias = name_field(request.alias, "alias", v)
        v.raise_if_any()
        written = await self.app.add_alias(command_id, person_id, alias)
        return pb.AddAliasResponse(position=written.position)

    async def RetireAlias(self, request, context):
        v = Violations()
        command_id = uuid_field(request.command_id, "command_id", v)
        person_id = uuid_field(request.person_id, "person_id", v)
        alias = name_field(request.alias, "alias", v)
        reason = reason_field(request.reason, "reason", v)
        v.raise_if_any()
        written = await self.app.retire_alias(command_id, person_id, alias, reason)
        return pb.RetireAliasResponse(position=written.position)

    async def CorrectSex(self, request, context):
        v = Violations()
        command_id = uuid_field(request.command_id, "command_id", v)
        person_id = uuid_field(request.person_id, "person_id", v)
        sex = sex_field(request.sex, "sex", v)
        reason = reason_field(request.reason, "reason", v)
        v.raise_if_any()
        written = await self.app.correct_sex(command_id, person_id, sex, reason)
        return pb.CorrectSexResponse(position=written.position)

    async def ChangeName(self, request, context):
        v = Violations()
        command_id = uuid_field(request.command_id, "command_id", v)
        person_id = uuid_field(request.person_id, "person_id", v)
        name = name_field(request.name, "name", v)
        reason = reason_field(request.reason, "reason", v)
        v.raise_if_any()
        written = await self.app.change_name(command_id, person_id, name, reason)
        return pb.ChangeNameResponse(position=written.position)

    async def CorrectDateOfBirth(self, request, context):
        v = Violations()
        command_id = uuid_field(request.command_id, "command_id", v)
        person_id = uuid_field(request.person_id, "person_id", v)
        date_of_birth = birth_date_field(request.date_of_birth, "date_of_birth", v)
        reason = reason_field(request.reason, "reason", v)
        v.raise_if_any()
        written = await self.app.correct_date_of_birth(command_id, person_id, date_of_birth, reason)
        return pb.CorrectDateOfBirthResponse(position=written.position)

    async def RecordDeath(self, request, context):
        v = Violations()
        command_id = uuid_field(request.command_id, "command_id", v)
        person_id = uuid_field(request.person_id, "person_id", v)
        date_of_death = past_date_field(request.date_of_death, "date_of_death", v)
        v.raise_if_any()
        written = await self.app.record_death(command_id, person_id, date_of_death)
        return pb.RecordDeathResponse(position=written.position)

    async def CorrectDeath(self, request, context):
        v = Violations()
        command_id = uuid_field(request.command_id, "command_id", v)
        person_id = uuid_field(request.person_id, "person_id", v)
        correction = request.WhichOneof("correction")
        date_of_death = None
        if correction == "date_of_death":
            date_of_death = past_date_field(request.date_of_death, "date_of_death", v)
        elif correction is None or not request.recorded_in_error:
            v.add("correction", "set date_of_death, or recorded_in_error to true")
        reason = reason_field(request.reason, "reason", v)
        v.raise_if_any()
        written = await self.app.correct_death(command_id, person_id, date_of_death, reason)
        return pb.CorrectDeathResponse(position=written.position)

    def _pair(self, request, v: Violations):
        survivor = uuid_field(request.survivor_person_id, "survivor_person_id", v)
        duplicate = uuid_field(request.duplicate_person_id, "duplicate_person_id", v)
        return survivor, duplicate

    async def MergePeople(self, request, context):
        v = Violations()
        command_id = uuid_field(request.command_id, "command_id", v)
        survivor, duplicate = self._pair(request, v)
        reason = reason_field(request.reason, "reason", v)
        v.raise_if_any()
        written = await self.app.merge_people(command_id, survivor, duplicate, reason)
        return pb.MergePeopleResponse(position=written.position)

    async def UnmergePeople(self, request, context):
        v = Violations()
        command_id = uuid_field(request.command_id, "command_id", v)
        survivor, duplicate = self._pair(request, v)
        reason = reason_field(request.reason, "reason", v)
        v.raise_if_any()
        written = await self.app.unmerge_people(command_id, survivor, duplicate, reason)
        return pb.UnmergePeopleResponse(position=written.position)

    async def MarkNotDuplicate(self, request, context):
        v = Violations()
        command_id = uuid_field(request.command_id, "command_id", v)
        person_id = uuid_field(request.person_id, "person_id", v)
        other_id = uuid_field(request.other_person_id, "other_person_id", v)
        reason = reason_field(request.reason, "reason", v)
        v.raise_if_any()
        written = await self.app.mark_not_duplicate(command_id, person_id, other_id, reason)
        return pb.MarkNotDuplicateResponse(position=written.position)

    async def GetPerson(self, request, context):
        v = Violations()
        known_at = moment_field(request, "known_at", v)
        key = request.WhichOneof("key")
        if key == "person_id":
            person_id = uuid_field(request.person_id, "person_id", v)
            v.raise_if_any()
            return _view_pb(await self.app.get_person(person_id, known_at=known_at))
        if key == "identifier":
            identifier = identifier_field(request.identifier, "identifier", v)
            v.raise_if_any()
            return _view_pb(await self.app.get_person_by_identifier(identifier, known_at=known_at))
        v.add("key", "set person_id or identifier")
        v.raise_if_any()

    async def GetPersonHistory(self, request, context):
        v = Violations()
        person_id = uuid_field(request.person_id, "person_id", v)
        known_at = moment_field(request, "known_at", v)
        after_version = version_field(request.after_version, "after_version", v)
        limit = limit_field(request.limit, "limit", v, default=100, most=1000)
        v.raise_if_any()
        found = await self.app.person_history(
            person_id, known_at=known_at, after_version=after_version, limit=limit
        )
        return pb.GetPersonHistoryResponse(
            events=[envelope(entry.recorded, self.translate) for entry in found.entries],
            person=person_pb(found.person) if found.person else None,
            merged_into_person_id=str(found.person.merged_into or "") if found.person else "",
            later_events=found.later,
            next_after_version=found.next_after_version,
        )

    async def SearchPeople(self, request, context):
        v = Violations()
        names = []
        if request.HasField("name"):
            # A search may give either part of a name; it is never stored.
            given, family = request.name.given_names.strip(), request.name.family_name.strip()
            for part, value in (("given_names", given), ("family_name", family)):
                if len(value) > MAX_NAME_LENGTH:
                    v.add(f"name.{part}", f"must be at most {MAX_NAME_LENGTH} characters")
            if given or family:
                names = [Name(given, family)]
            else:
                v.add("name", "give a given name, a family name or both, or leave name out")
        date_of_birth = birth_date_field(request.date_of_birth, "date_of_birth", v, required=False)
        identifiers = each(
            request.identifiers, "identifiers", v, identifier_field, most=MAX_IDENTIFIERS
        )
        limit = limit_field(request.limit, "limit", v)
        min_position = position_field(request.min_position, "min_position", v)
        if not names and date_of_birth is None and not identifiers and not v.found:
            v.add("name", "search by at least a name, a date of birth or an identifier")
        v.raise_if_any()
        found = await self.app.search_people(
            names=names,
            date_of_birth=date_of_birth,
            identifiers=identifiers,
            limit=limit,
            min_position=min_position,
        )
        return pb.SearchPeopleResponse(
            candidates=[candidate_pb(c) for c in found.candidates], incomplete=found.incomplete
        )

    async def ListPossibleDuplicates(self, request, context):
        v = Violations()
        person_id = uuid_field(request.person_id, "person_id", v)
        threshold = request.threshold or DEFAULT_THRESHOLD
        if not 0 < threshold <= 1:
            v.add("threshold", "must be greater than 0 and at most 1, or 0 for the default")
        limit = limit_field(request.limit, "limit", v)
        min_position = position_field(request.min_position, "min_position", v)
        v.raise_if_any()
        found = await self.app.list_possible_duplicates(
            person_id, threshold=threshold, limit=limit, min_position=min_position
        )
        return pb.ListPossibleDuplicatesResponse(
            candidates=[candidate_pb(c) for c in found.candidates], incomplete=found.incomplete
        )


def build_server(identity: Identity, verifier: TokenVerifier) -> Server:
    """The identity gRPC server: IdentityService and this service's event feed."""
    translate = event_translator(identity.mapper)
    return identity_server(
        identity.application,
        verifier,
        translate,
        feed=EventFeedServicer(
            identity.store, translate, access_log=identity.application.access_log
        ),
    )


def identity_server(
    application: IdentityApplication,
    verifier: TokenVerifier,
    translate: Translator,
    *,
    feed: EventFeedServicer | None = None,
) -> Server:
    """A server for IdentityService over `application`, with `feed` when given.
    `translate` turns stored events into the feed's messages (GetPersonHistory)."""
    return Server(
        "identity",
        [
            Registration(
                SERVICE,
                identity_pb2_grpc.add_IdentityServiceServicer_to_server,
                IdentityServicer(application, translate),
            )
        ],
        verifier=verifier,
        policy=POLICY,
        feed=feed,
    )
