"""The identity context: a Person, every identifier they hold, and the claims that make an
identifier belong to at most one active person. Corrections keep the old value in the
event; merges move identifiers and aliases and leave the duplicate as a redirect."""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from libs.domain.errors import InvalidFieldError, RuleViolatedError
from libs.domain.ids import time_ordered_id
from services.identity.identifiers import IDENTIFIER_TYPES, Identifier, IdentifierType

OLDEST_AGE_YEARS = 130
MAX_NAME_LENGTH = 200  # each of given names and family name
MAX_REASON_LENGTH = 2000  # a reason explains a decision; documents belong elsewhere
MAX_REDIRECTS = 20  # a longer chain of merges is a fault, not a record
CLAIM_NAMESPACE = uuid5(NAMESPACE_URL, "https://throughline.dev/identity/identifier-claim")
_CLAIM_NAMESPACE_BYTES = CLAIM_NAMESPACE.bytes


class Sex(StrEnum):
    MALE = "MALE"
    FEMALE = "FEMALE"
    NOT_KNOWN = "NOT_KNOWN"
    NOT_SPECIFIED = "NOT_SPECIFIED"


SEXES = {sex.value: sex for sex in Sex}  # by value (see IDENTIFIER_TYPES)


class Status(StrEnum):
    ACTIVE = "ACTIVE"
    MERGED = "MERGED"  # a redirect to the survivor of a merge


@dataclass(frozen=True)
class Name:
    """A person's name exactly as given: any script, accents, apostrophes and hyphens."""

    given_names: str
    family_name: str

    @classmethod
    def checked(cls, given_names: str, family_name: str, *, field: str = "") -> Name:
        prefix = f"{field}." if field else ""
        violations = []
        given = unicodedata.normalize("NFC", given_names or "").strip()
        family = unicodedata.normalize("NFC", family_name or "").strip()
        if not given:
            violations.append((f"{prefix}given_names", "must not be empty"))
        if not family:
            violations.append((f"{prefix}family_name", "must not be empty"))
        for name_field, value in (
            (f"{prefix}given_names", given),
            (f"{prefix}family_name", family),
        ):
            if len(value) > MAX_NAME_LENGTH:
                violations.append((name_field, f"must be at most {MAX_NAME_LENGTH} characters"))
            # Printable strings hold no control or formatting character: the common case,
            # checked without looking at each character.
            if not value.isprintable() and any(_hidden(c) for c in value):
                violations.append(
                    (name_field, "must not contain control or invisible formatting characters")
                )
        if violations:
            raise InvalidFieldError(*violations)
        return cls(given, family)

    def as_dict(self) -> dict[str, str]:
        return {"given_names": self.given_names, "family_name": self.family_name}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> Name:
        return cls(data["given_names"], data["family_name"])


# Zero-width non-joiner and joiner: invisible, but part of how Persian, Urdu and Indic
# scripts spell names. Other formatting characters (bidirectional overrides, zero-width
# spaces) only hide or disguise what a name says.
_JOINERS = frozenset("\u200c\u200d")


def _hidden(char: str) -> bool:
    category = unicodedata.category(char)
    return category == "Cc" or (category == "Cf" and char not in _JOINERS)


def check_date_of_birth(value: date, today: date, *, field: str = "date_of_birth") -> date:
    if value > today:
        raise InvalidFieldError((field, "must not be in the future"))
    if today.year - value.year > OLDEST_AGE_YEARS:
        raise InvalidFieldError((field, f"must be within the last {OLDEST_AGE_YEARS} years"))
    return value


def check_reason(reason: str, *, field: str = "reason") -> str:
    reason = (reason or "").strip()
    if not reason:
        raise InvalidFieldError((field, "must say why (it is kept with the record)"))
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidFieldError((field, f"must be at most {MAX_REASON_LENGTH} characters"))
    return reason


def _pair(identifier: Identifier) -> list[str]:
    return [identifier.type.value, identifier.value]


def _identifier(pair: list[str]) -> Identifier:
    return Identifier(IDENTIFIER_TYPES[pair[0]], pair[1])


class Person(Aggregate):
    """One person on the record. `occurred_at` on each event is when the fact happened
    (or was decided); the store adds when it was recorded and by whom. A new person's id
    sorts by when it was made (`libs.domain.ids`)."""

    @staticmethod
    def create_id() -> UUID:
        return time_ordered_id()

    @event("Registered")
    def __init__(
        self,
        name: dict[str, str],
        date_of_birth: date,
        sex: str,
        identifiers: list[list[str]],
        aliases: list[dict[str, str]],
        occurred_at: datetime,
    ) -> None:
        self.name = Name.from_dict(name)
        self.date_of_birth = date_of_birth
        self.sex = SEXES[sex]
        self.identifiers: set[Identifier] = {_identifier(p) for p in identifiers}
        self.aliases: list[Name] = [Name.from_dict(a) for a in aliases]
        self.status = Status.ACTIVE
        self.merged_into: UUID | None = None
        self.date_of_death: date | None = None
        # For each duplicate merged into this person, what moved, so it can be unmerged.
        self.absorbed: dict[UUID, dict[str, Any]] = {}
        self.not_duplicates: set[UUID] = set()

    @classmethod
    def register(
        cls,
        name: Name,
        date_of_birth: date,
        sex: Sex,
        identifiers: list[Identifier],
        aliases: list[Name],
        occurred_at: datetime,
    ) -> Person:
        check_date_of_birth(date_of_birth, occurred_at.date())
        # `_create` with the event class, as `cls(...)` would after matching the
        # arguments to `__init__`'s signature: a few microseconds less per registration.
        return cls._create(
            cls.Registered,
            name=name.as_dict(),
            date_of_birth=date_of_birth,
            sex=sex.value,
            identifiers=[_pair(i) for i in sorted(set(identifiers))],
            aliases=[a.as_dict() for a in aliases],
            occurred_at=occurred_at,
        )

    # ------------------------------------------------------------------ rules

    def _require_active(self) -> None:
        if self.status is Status.MERGED:
            raise RuleViolatedError(
                "person_merged",
                f"person {self.id} was merged into {self.merged_into}; act on the survivor",
            )

    # -------------------------------------------------------------- commands

    def record_identifier(self, identifier: Identifier, occurred_at: datetime) -> None:
        self._require_active()
        if identifier not in self.identifiers:
            self._identifier_recorded(identifier=_pair(identifier), occurred_at=occurred_at)

    @event("IdentifierRecorded")
    def _identifier_recorded(self, identifier: list[str], occurred_at: datetime) -> None:
        self.identifiers.add(_identifier(identifier))

    def retire_identifier(self, identifier: Identifier, reason: str, occurred_at: datetime) -> None:
        self._require_active()
        if identifier not in self.identifiers:
            raise RuleViolatedError(
                "identifier_not_held", f"person {self.id} does not hold {identifier}"
            )
        self._identifier_retired(
            identifier=_pair(identifier), reason=check_reason(reason), occurred_at=occurred_at
        )

    @event("IdentifierRetired")
    def _identifier_retired(
        self, identifier: list[str], reason: str, occurred_at: datetime
    ) -> None:
        self.identifiers.discard(_identifier(identifier))

    def add_alias(self, alias: Name, occurred_at: datetime) -> None:
        self._require_active()
        if alias != self.name and alias not in self.aliases:
            self._alias_added(alias=alias.as_dict(), occurred_at=occurred_at)

    @event("AliasAdded")
    def _alias_added(self, alias: dict[str, str], occurred_at: datetime) -> None:
        self.aliases.append(Name.from_dict(alias))

    def retire_alias(self, alias: Name, reason: str, occurred_at: datetime) -> None:
        """Stops matching on a name the person was recorded as known by in error; the
        alias and the reason stay in the history."""
        self._require_active()
        if alias not in self.aliases:
            raise RuleViolatedError("alias_not_held", f"person {self.id} has no alias {alias}")
        self._alias_retired(
            alias=alias.as_dict(), reason=check_reason(reason), occurred_at=occurred_at
        )

    @event("AliasRetired")
    def _alias_retired(self, alias: dict[str, str], reason: str, occurred_at: datetime) -> None:
        self.aliases.remove(Name.from_dict(alias))

    def correct_sex(self, sex: Sex, reason: str, occurred_at: datetime) -> None:
        self._require_active()
        if sex is self.sex:
            return
        self._sex_corrected(
            sex=sex.value,
            previous_sex=self.sex.value,
            reason=check_reason(reason),
            occurred_at=occurred_at,
        )

    @event("SexCorrected")
    def _sex_corrected(
        self, sex: str, previous_sex: str, reason: str, occurred_at: datetime
    ) -> None:
        self.sex = Sex(sex)

    def change_name(self, name: Name, reason: str, occurred_at: datetime) -> None:
        self._require_active()
        if name == self.name:
            return
        self._name_changed(
            name=name.as_dict(),
            previous=self.name.as_dict(),
            reason=check_reason(reason),
            occurred_at=occurred_at,
        )

    @event("NameChanged")
    def _name_changed(
        self, name: dict[str, str], previous: dict[str, str], reason: str, occurred_at: datetime
    ) -> None:
        self.name = Name.from_dict(name)
        # The old name stays searchable: people are known by it in older records.
        old = Name.from_dict(previous)
        if old not in self.aliases:
            self.aliases.append(old)

    def correct_date_of_birth(
        self, date_of_birth: date, reason: str, occurred_at: datetime
    ) -> None:
        self._require_active()
        if date_of_birth == self.date_of_birth:
            return
        check_date_of_birth(date_of_birth, occurred_at.date())
        if self.date_of_death is not None and date_of_birth > self.date_of_death:
            raise InvalidFieldError(
                (
                    "date_of_birth",
                    f"must not be after the recorded date of death ({self.date_of_death})",
                )
            )
        self._date_of_birth_corrected(
            date_of_birth=date_of_birth,
            previous=self.date_of_birth,
            reason=check_reason(reason),
            occurred_at=occurred_at,
        )

    @event("DateOfBirthCorrected")
    def _date_of_birth_corrected(
        self, date_of_birth: date, previous: date, reason: str, occurred_at: datetime
    ) -> None:
        self.date_of_birth = date_of_birth

    def record_death(self, date_of_death: date, occurred_at: datetime) -> None:
        self._require_active()
        if date_of_death < self.date_of_birth:
            raise InvalidFieldError(("date_of_death", "must not be before the date of birth"))
        if self.date_of_death is not None:
            raise RuleViolatedError(
                "death_already_recorded",
                f"person {self.id} already has a date of death ({self.date_of_death}); "
                "correct it instead",
            )
        self._death_recorded(date_of_death=date_of_death, occurred_at=occurred_at)

    @event("DeathRecorded")
    def _death_recorded(self, date_of_death: date, occurred_at: datetime) -> None:
        self.date_of_death = date_of_death

    def correct_death(self, date_of_death: date | None, reason: str, occurred_at: datetime) -> None:
        """Corrects a recorded death to another date or, given None, withdraws it: it was
        recorded in error (on the wrong person, or of someone still alive). The recorded
        death stays in the history, with the correction and its reason after it."""
        self._require_active()
        if self.date_of_death is None:
            raise RuleViolatedError(
                "death_not_recorded", f"person {self.id} has no recorded death to correct"
            )
        if date_of_death == self.date_of_death:
            return
        if date_of_death is not None and date_of_death < self.date_of_birth:
            raise InvalidFieldError(("date_of_death", "must not be before the date of birth"))
        self._death_corrected(
            date_of_death=date_of_death,
            previous_date_of_death=self.date_of_death,
            reason=check_reason(reason),
            occurred_at=occurred_at,
        )

    @event("DeathCorrected")
    def _death_corrected(
        self,
        date_of_death: date | None,
        previous_date_of_death: date,
        reason: str,
        occurred_at: datetime,
    ) -> None:
        self.date_of_death = date_of_death

    # ----------------------------------------------------------------- merging

    def merge_into(
        self,
        survivor: Person,
        reason: str,
        occurred_at: datetime,
        *,
        merged_into_self: Sequence[Person] = (),
        merged_into_survivor: Sequence[Person] = (),
    ) -> None:
        """Makes this person a redirect to `survivor`, moving identifiers and aliases.

        `merged_into_self` and `merged_into_survivor` are the people earlier merges made
        part of each, directly or through another merge (followed from `absorbed`). A
        decision that one of them is not the same person as one on the other side keeps
        the two sides apart, as it keeps apart the two people it was recorded on."""
        if survivor.id == self.id:
            raise RuleViolatedError("merge_into_self", "a person cannot be merged into themself")
        self._require_active()
        if survivor.status is Status.MERGED:
            raise RuleViolatedError(
                "survivor_merged",
                f"survivor {survivor.id} was itself merged into {survivor.merged_into}",
            )
        if self.date_of_death != survivor.date_of_death:
            # Which record is right about a death is for a person to decide: a merge
            # would otherwise keep the survivor's and drop the other silently.
            raise RuleViolatedError(
                "death_differs",
                f"{_death(self)} but {_death(survivor)}: record or correct the death so "
                f"the two agree before merging",
            )
        apart = kept_apart([self, *merged_into_self], [survivor, *merged_into_survivor])
        if apart is not None:
            one, other = apart
            merged = [str(p) for p in apart if p not in (self.id, survivor.id)]
            through = f" ({', '.join(merged)} merged earlier)" if merged else ""
            raise RuleViolatedError(
                "marked_not_duplicate",
                f"{one} and {other} were marked as not the same person{through}",
            )
        reason = check_reason(reason)
        moved_identifiers = [_pair(i) for i in sorted(self.identifiers)]
        moved_aliases = [a.as_dict() for a in [self.name, *self.aliases]]
        self._merged_into(
            survivor_id=survivor.id,
            identifiers=moved_identifiers,
            aliases=moved_aliases,
            reason=reason,
            occurred_at=occurred_at,
        )
        survivor._absorbed(
            duplicate_id=self.id,
            identifiers=moved_identifiers,
            aliases=moved_aliases,
            reason=reason,
            occurred_at=occurred_at,
        )

    @event("MergedInto")
    def _merged_into(
        self,
        survivor_id: UUID,
        identifiers: list[list[str]],
        aliases: list[dict[str, str]],
        reason: str,
        occurred_at: datetime,
    ) -> None:
        self.status = Status.MERGED
        self.merged_into = survivor_id
        self.identifiers = set()

    @event("DuplicateAbsorbed")
    def _absorbed(
        self,
        duplicate_id: UUID,
        identifiers: list[list[str]],
        aliases: list[dict[str, str]],
        reason: str,
        occurred_at: datetime,
    ) -> None:
        new_identifiers = [p for p in identifiers if _identifier(p) not in self.identifiers]
        new_aliases = [
            a
            for a in aliases
            if Name.from_dict(a) != self.name and Name.from_dict(a) not in self.aliases
        ]
        self.identifiers.update(_identifier(p) for p in new_identifiers)
        self.aliases.extend(Name.from_dict(a) for a in new_aliases)
        self.absorbed[duplicate_id] = {"identifiers": new_identifiers, "aliases": new_aliases}

    def unmerge_from(
        self, survivor: Person, reason: str, occurred_at: datetime
    ) -> list[Identifier]:
        """Reverses the merge of this person into `survivor`; returns the identifiers that
        come back to this person."""
        if self.status is not Status.MERGED or self.merged_into != survivor.id:
            raise RuleViolatedError(
                "not_merged", f"person {self.id} is not merged into {survivor.id}"
            )
        if survivor.status is Status.MERGED:
            # What moved from this person went on to the survivor's survivor; merges are
            # undone newest first, so it comes back along the way it went.
            raise RuleViolatedError(
                "survivor_merged",
                f"{survivor.id} was itself merged into {survivor.merged_into}: "
                f"unmerge it from {survivor.merged_into} first",
            )
        moved = survivor.absorbed.get(self.id, {"identifiers": [], "aliases": []})
        returning = [p for p in moved["identifiers"] if _identifier(p) in survivor.identifiers]
        reason = check_reason(reason)
        survivor._released(
            duplicate_id=self.id,
            identifiers=returning,
            aliases=moved["aliases"],
            reason=reason,
            occurred_at=occurred_at,
        )
        self._unmerged(
            survivor_id=survivor.id, identifiers=returning, reason=reason, occurred_at=occurred_at
        )
        return [_identifier(p) for p in returning]

    @event("DuplicateReleased")
    def _released(
        self,
        duplicate_id: UUID,
        identifiers: list[list[str]],
        aliases: list[dict[str, str]],
        reason: str,
        occurred_at: datetime,
    ) -> None:
        for pair in identifiers:
            self.identifiers.discard(_identifier(pair))
        gone = [Name.from_dict(a) for a in aliases]
        self.aliases = [a for a in self.aliases if a not in gone]
        self.absorbed.pop(duplicate_id, None)

    @event("Unmerged")
    def _unmerged(
        self, survivor_id: UUID, identifiers: list[list[str]], reason: str, occurred_at: datetime
    ) -> None:
        self.status = Status.ACTIVE
        self.merged_into = None
        self.identifiers = {_identifier(p) for p in identifiers}

    def mark_not_duplicate(self, other: Person, reason: str, occurred_at: datetime) -> None:
        """Records a human decision that this person and `other` are different people."""
        if other.id == self.id:
            raise RuleViolatedError("same_person", "a person cannot be marked as not themself")
        # A merged person is a redirect: the decision belongs on the survivor (or, if the
        # merge was wrong, on both after an unmerge).
        self._require_active()
        other._require_active()
        reason = check_reason(reason)
        if other.id not in self.not_duplicates:
            self._not_duplicate_marked(other_id=other.id, reason=reason, occurred_at=occurred_at)
        if self.id not in other.not_duplicates:
            other._not_duplicate_marked(other_id=self.id, reason=reason, occurred_at=occurred_at)

    @event("NotDuplicateMarked")
    def _not_duplicate_marked(self, other_id: UUID, reason: str, occurred_at: datetime) -> None:
        self.not_duplicates.add(other_id)


def _death(person: Person) -> str:
    if person.date_of_death is None:
        return f"{person.id} has no recorded death"
    return f"{person.id} died on {person.date_of_death}"


def kept_apart(one: Sequence[Person], other: Sequence[Person]) -> tuple[UUID, UUID] | None:
    """The first pair of people, one from each side, marked as not the same person."""
    for a in one:
        for b in other:
            if b.id in a.not_duplicates or a.id in b.not_duplicates:
                return a.id, b.id
    return None


def claim_id(identifier: Identifier) -> UUID:
    """`uuid5(CLAIM_NAMESPACE, "TYPE:value")`, without making the namespace's bytes again
    for every identifier claimed."""
    name = f"{identifier.type.value}:{identifier.value}".encode()
    return UUID(bytes=hashlib.sha1(_CLAIM_NAMESPACE_BYTES + name).digest()[:16], version=5)


class IdentifierClaim(Aggregate):
    """Which person holds an identifier now. Its id is derived from the identifier, so
    two people claiming the same identifier write to the same stream and one loses."""

    @staticmethod
    def create_id(identifier_type: str, value: str) -> UUID:
        return claim_id(Identifier(IdentifierType(identifier_type), value))

    @event("Claimed")
    def __init__(self, identifier_type: str, value: str, person_id: UUID) -> None:
        self.identifier = Identifier(IDENTIFIER_TYPES[identifier_type], value)
        self.holder: UUID | None = person_id

    @classmethod
    def first(cls, identifier: Identifier, person_id: UUID) -> IdentifierClaim:
        return cls._create(
            cls.Claimed,
            id=claim_id(identifier),
            identifier_type=identifier.type.value,
            value=identifier.value,
            person_id=person_id,
        )

    def claim(self, person_id: UUID) -> None:
        if self.holder == person_id:
            return
        self._claimed(
            identifier_type=self.identifier.type.value,
            value=self.identifier.value,
            person_id=person_id,
        )

    # Every claim event names its identifier, so feed consumers need no lookup.
    @event("Reclaimed")
    def _claimed(self, identifier_type: str, value: str, person_id: UUID) -> None:
        self.holder = person_id

    def release(self, person_id: UUID) -> None:
        if self.holder == person_id:
            self._released(
                identifier_type=self.identifier.type.value,
                value=self.identifier.value,
                person_id=person_id,
            )

    @event("Released")
    def _released(self, identifier_type: str, value: str, person_id: UUID) -> None:
        self.holder = None
