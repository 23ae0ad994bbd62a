"""Converts between the identity protos and domain types, collecting every field that
breaks a rule so a request learns all its problems at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.persistence import Mapper
from throughline.common.v1 import date_pb2
from throughline.identity.v1 import identity_pb2 as pb

from libs.chassis.feed import TranslatedEvent
from libs.domain.errors import InvalidFieldError
from libs.eventstore import RecordedEvent
from services.identity.domain import Name, Person, Sex, check_date_of_birth, check_reason
from services.identity.identifiers import (
    Identifier,
    IdentifierType,
    InvalidIdentifier,
    parse_identifier,
)
from services.identity.search_index import Candidate


class Violations:
    """Collects (field, rule) pairs while a request is read; `raise_if_any` at the end."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []

    def add(self, field: str, rule: str) -> None:
        self.found.append((field, rule))

    def catch(self, error: InvalidFieldError) -> None:
        self.found.extend(error.violations)

    def raise_if_any(self) -> None:
        if self.found:
            raise InvalidFieldError(*self.found)


T = TypeVar("T")

# Per request: enough for the most-aliased people on the national record, small enough
# that one request cannot make an event or a search of unbounded size.
MAX_IDENTIFIERS = 50
MAX_ALIASES = 100
_SEXES = ", ".join(name for name, number in pb.Sex.items() if number != pb.SEX_UNSPECIFIED)
# Every request names a sex or an identifier type by number: each looked up once.
_SEX_BY_NUMBER = {
    number: Sex(name.removeprefix("SEX_"))
    for name, number in pb.Sex.items()
    if number != pb.SEX_UNSPECIFIED
}
_IDENTIFIER_TYPE_BY_NUMBER = {
    number: name.removeprefix("IDENTIFIER_TYPE_")
    for name, number in pb.IdentifierType.items()
    if number != pb.IDENTIFIER_TYPE_UNSPECIFIED
}


def today() -> date:
    return datetime.now(UTC).date()


def uuid_field(value: str, field: str, v: Violations) -> UUID | None:
    try:
        return UUID(value)
    except (ValueError, TypeError):
        v.add(field, "must be a UUID")
        return None


def name_field(message: pb.Name, field: str, v: Violations) -> Name | None:
    try:
        return Name.checked(message.given_names, message.family_name, field=field)
    except InvalidFieldError as error:
        v.catch(error)
        return None


def date_field(
    message: date_pb2.Date, field: str, v: Violations, *, required: bool = True
) -> date | None:
    if (message.year, message.month, message.day) == (0, 0, 0):
        if required:
            v.add(field, "is required")
        return None
    try:
        return date(message.year, message.month, message.day)
    except ValueError:
        v.add(field, "must be a real calendar date")
        return None


def birth_date_field(
    message: date_pb2.Date, field: str, v: Violations, *, required: bool = True
) -> date | None:
    value = date_field(message, field, v, required=required)
    if value is None:
        return None
    try:
        return check_date_of_birth(value, today(), field=field)
    except InvalidFieldError as error:
        v.catch(error)
        return None


def past_date_field(message: date_pb2.Date, field: str, v: Violations) -> date | None:
    value = date_field(message, field, v)
    if value is not None and value > today():
        v.add(field, "must not be in the future")
        return None
    return value


def identifier_field(message: pb.Identifier, field: str, v: Violations) -> Identifier | None:
    kind = _IDENTIFIER_TYPE_BY_NUMBER.get(message.type)
    if kind is None:
        if message.type == pb.IDENTIFIER_TYPE_UNSPECIFIED:
            v.add(f"{field}.type", "must be set")
        else:
            v.add(f"{field}.type", f"{message.type} is not an identifier type this service knows")
        return None
    try:
        return parse_identifier(kind, message.value)
    except InvalidIdentifier as error:
        v.add(f"{field}.value", str(error))
        return None


def sex_field(value: int, field: str, v: Violations) -> Sex | None:
    sex = _SEX_BY_NUMBER.get(value)
    if sex is None:
        if value == pb.SEX_UNSPECIFIED:
            v.add(field, "must be set")
        else:
            v.add(field, f"must be one of {_SEXES}")
    return sex


def each(
    items: Sequence[Any],
    field: str,
    v: Violations,
    check: Callable[[Any, str, Violations], T],
    *,
    most: int,
) -> list[T]:
    """Checks each entry of a repeated field, which may have at most `most` entries."""
    if len(items) > most:
        v.add(field, f"must have at most {most} entries")
        return []
    return [check(item, f"{field}[{n}]", v) for n, item in enumerate(items)]


def reason_field(value: str, field: str, v: Violations) -> str:
    try:
        return check_reason(value, field=field)
    except InvalidFieldError as error:
        v.catch(error)
        return ""


def limit_field(
    value: int, field: str, v: Violations, *, default: int = 10, most: int = 100
) -> int:
    if value == 0:
        return default
    if not 1 <= value <= most:
        v.add(field, f"must be between 1 and {most}, or 0 for {default}")
    return value


def position_field(value: int, field: str, v: Violations) -> int:
    if value < 0:
        v.add(field, "must be 0 or a store position")
    return value


def moment_field(request: Any, field: str, v: Violations) -> datetime | None:
    """An optional Timestamp field as an aware datetime (None when unset)."""
    if not request.HasField(field):
        return None
    try:
        return getattr(request, field).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        v.add(field, "must be a time between the years 1 and 9999")
        return None


def version_field(value: int, field: str, v: Violations) -> int:
    if value < 0:
        v.add(field, "must be 0 or a version of the person's stream")
    return value


# ------------------------------------------------------------------ to protos


def date_pb(value: date | None) -> date_pb2.Date | None:
    if value is None:
        return None
    return date_pb2.Date(year=value.year, month=value.month, day=value.day)


def name_pb(name: Name | dict[str, str]) -> pb.Name:
    if isinstance(name, dict):
        name = Name.from_dict(name)
    return pb.Name(given_names=name.given_names, family_name=name.family_name)


def identifier_pb(identifier: Identifier | list[str]) -> pb.Identifier:
    if not isinstance(identifier, Identifier):
        identifier = Identifier(IdentifierType(identifier[0]), identifier[1])
    return pb.Identifier(
        type=pb.IdentifierType.Value(f"IDENTIFIER_TYPE_{identifier.type.value}"),
        value=identifier.value,
    )


def person_pb(person: Person) -> pb.Person:
    return pb.Person(
        person_id=str(person.id),
        name=name_pb(person.name),
        date_of_birth=date_pb(person.date_of_birth),
        sex=pb.Sex.Value(f"SEX_{person.sex.value}"),
        identifiers=[identifier_pb(i) for i in sorted(person.identifiers)],
        aliases=[name_pb(a) for a in person.aliases],
        date_of_death=date_pb(person.date_of_death),
        version=person.version,
    )


def candidate_pb(candidate: Candidate) -> pb.Candidate:
    return pb.Candidate(
        person_id=str(candidate.person_id),
        name=pb.Name(given_names=candidate.given_names, family_name=candidate.family_name),
        date_of_birth=date_pb(candidate.date_of_birth),
        score=candidate.match.score,
        reasons=list(candidate.match.reasons),
    )


# ------------------------------------------------------------------ the feed

_OTHER_PERSON = ("survivor_id", "duplicate_id", "other_id")


def _person_event(event: Any) -> pb.PersonEvent:
    kind = type(event).__name__
    facts = vars(event)
    message = pb.PersonEvent(event_name=kind, person_id=str(event.originator_id))
    if isinstance(facts.get("name"), dict):
        message.name.CopyFrom(name_pb(facts["name"]))
    if isinstance(facts.get("previous"), dict):
        message.previous_name.CopyFrom(name_pb(facts["previous"]))
    if isinstance(facts.get("previous"), date):
        message.previous_date_of_birth.CopyFrom(date_pb(facts["previous"]))
    if isinstance(facts.get("date_of_birth"), date):
        message.date_of_birth.CopyFrom(date_pb(facts["date_of_birth"]))
    if "sex" in facts:
        message.sex = pb.Sex.Value(f"SEX_{facts['sex']}")
    if "previous_sex" in facts:
        message.previous_sex = pb.Sex.Value(f"SEX_{facts['previous_sex']}")
    if facts.get("date_of_death") is not None:
        message.date_of_death.CopyFrom(date_pb(facts["date_of_death"]))
    if facts.get("previous_date_of_death") is not None:
        message.previous_date_of_death.CopyFrom(date_pb(facts["previous_date_of_death"]))
    identifiers = facts.get("identifiers") or (
        [facts["identifier"]] if "identifier" in facts else []
    )
    message.identifiers.extend(identifier_pb(i) for i in identifiers)
    aliases = facts.get("aliases") or ([facts["alias"]] if "alias" in facts else [])
    message.aliases.extend(name_pb(a) for a in aliases)
    message.reason = facts.get("reason", "")
    for key in _OTHER_PERSON:
        if key in facts:
            message.other_person_id = str(facts[key])
    if "occurred_at" in facts:
        message.occurred_at.FromDatetime(facts["occurred_at"])
    return message


def event_translator(mapper: Mapper):
    """The feed's translator: each stored event as its typed protobuf message."""

    def translate(recorded: RecordedEvent) -> TranslatedEvent:
        event = mapper.to_domain_event(recorded)
        kind = type(event).__name__
        occurred_at = getattr(event, "occurred_at", None) or event.timestamp
        if recorded.topic.split(":")[1].startswith("Person."):
            payload = _person_event(event)
            event_type = f"throughline.identity.v1.PersonEvent.{kind}"
        else:
            facts = vars(event)
            holder = facts.get("person_id")
            payload = pb.IdentifierClaimEvent(
                event_name=kind, person_id=str(holder) if holder else ""
            )
            if "identifier_type" in facts:
                payload.identifier.CopyFrom(
                    identifier_pb([facts["identifier_type"], facts["value"]])
                )
            event_type = f"throughline.identity.v1.IdentifierClaimEvent.{kind}"
        return TranslatedEvent(event_type=event_type, occurred_at=occurred_at, payload=payload)

    return translate
