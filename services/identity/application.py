"""Identity command handlers and queries: load, decide, save. Every command carries a
client command id; a retry returns the first result and records nothing new, and the same
id sent with a different command is refused. A command that loses a race to another
writer reloads and decides again."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, project_aggregate
from eventsourcing.domain import Aggregate

from libs.domain.errors import (
    AlreadyExistsError,
    DomainError,
    InvalidFieldError,
    NotFoundError,
    RuleViolatedError,
)
from libs.eventstore import (
    AccessLog,
    AppendResult,
    ConcurrencyError,
    EventStore,
    ProjectionCheck,
    RecordedEvent,
    Repository,
    TrackingStore,
    command_digest,
)
from services.identity.domain import (
    MAX_REDIRECTS,
    IdentifierClaim,
    Name,
    Person,
    Sex,
    Status,
    claim_id,
)
from services.identity.identifiers import Identifier
from services.identity.matching import DEFAULT_THRESHOLD, NameKey, Profile
from services.identity.search_index import (
    PROJECTION_NAME,
    Found,
    IndexCounts,
    SearchIndex,
)

MAX_ATTEMPTS = 5


T = TypeVar("T")
_UUIDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class Written:
    """What a command wrote: the person it concerns and the store position of the write."""

    person_id: UUID
    position: int
    duplicate: bool


@dataclass(frozen=True)
class PersonView:
    person: Person
    redirected_from: UUID | None
    version_position: int | None = None


@dataclass(frozen=True)
class HistoryEntry:
    """One event of a person's record: what it said, when it happened, and when and by
    whom it was recorded."""

    position: int
    version: int
    event: str
    occurred_at: datetime
    recorded_at: datetime
    actor: str | None
    facts: dict[str, Any]
    recorded: RecordedEvent  # as stored, for the feed's envelope


@dataclass(frozen=True)
class PersonHistory:
    """A person's record as it was known at `known_at` (now, when None): the events
    recorded by then (or one page of them) and the person they all made. `later` counts
    events recorded since; `next_after_version` is where the next page starts, 0 when
    this page ends the events known then."""

    person_id: UUID
    known_at: datetime | None
    entries: list[HistoryEntry]
    person: Person | None
    later: int
    next_after_version: int = 0


@dataclass(frozen=True)
class ServiceStatus:
    head_position: int
    newest_recorded_at: datetime | None
    index_position: int  # the store position the search index has applied up to
    index: IndexCounts

    @property
    def index_behind(self) -> int:
        return self.head_position - self.index_position


# What every event carries, shown in the history's own columns rather than as facts.
_ENVELOPE = frozenset(
    {"originator_id", "originator_version", "originator_topic", "timestamp", "occurred_at"}
)


def _search_profile(
    names: list[Name], date_of_birth: date | None, identifiers: list[Identifier]
) -> Profile:
    keys = [NameKey.of(n.given_names, n.family_name) for n in names]
    # Blocking finds people by a family name's sound, or by a date of birth: a given
    # name alone would have to read everyone, and finding no one would tell the caller,
    # wrongly, that the person is not on the record.
    if keys and not any(k.family for k in keys) and date_of_birth is None and not identifiers:
        raise InvalidFieldError(
            (
                "name.family_name",
                "a given name alone is too broad to search by: add the family name, "
                "a date of birth or an identifier",
            )
        )
    return Profile(names=keys, date_of_birth=date_of_birth, identifiers=set(identifiers))


def _shown_in_view(view: PersonView) -> list[UUID]:
    return [view.person.id, *([view.redirected_from] if view.redirected_from else [])]


def _shown_in_found(found: Found) -> list[UUID]:
    return [c.person_id for c in found.candidates]


def _search_asked(
    names: list[Name], date_of_birth: date | None, identifiers: list[Identifier]
) -> dict[str, Any]:
    return {
        "names": [n.as_dict() for n in names] or None,
        "date_of_birth": date_of_birth,
        "identifiers": [str(i) for i in identifiers] or None,
    }


def utcnow() -> datetime:
    return datetime.now(UTC)


def asked(command: str, **arguments: object) -> bytes:
    """The digest of an identity command and the arguments its caller gave.

    Arguments left unset (None) are left out, so that a command gaining an optional
    argument keeps the digests it had: a retry that spans the deploy is still a retry."""
    given = {name: value for name, value in arguments.items() if value is not None}
    return command_digest(f"identity.{command}", given)


class IdentityApplication:
    def __init__(
        self,
        store: EventStore,
        repository: Repository,
        search_index: SearchIndex,
        tracking: TrackingStore,
        *,
        access_log: AccessLog,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.repository = repository
        self.search_index = search_index
        self.tracking = tracking
        self.access_log = access_log
        self.clock = clock

    # ------------------------------------------------------------------ plumbing

    async def _run(
        self,
        command_id: UUID,
        digest: bytes,
        decide: Callable[[bool], Awaitable[tuple[UUID, list[Aggregate]]]],
    ) -> Written:
        # A retry is recognised without a look-up first: the store refuses to append a
        # command id twice and hands back the original result, or refuses the append
        # when the id was first used for a different command (`digest` tells them
        # apart). Only when deciding again fails (the first attempt already changed the
        # record) or appends nothing is the command id looked up.
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                person_id, aggregates = await decide(attempt == 1)
            except DomainError:
                if earlier := await self.store.command_result(command_id, command_digest=digest):
                    return await self._written(earlier)
                raise
            try:
                result = await self.repository.save(
                    *aggregates, command_id=command_id, command_digest=digest
                )
            except ConcurrencyError:
                if attempt == MAX_ATTEMPTS:
                    raise
                continue
            if result.duplicate:
                return await self._written(result)
            if not result.positions and (
                earlier := await self.store.command_result(command_id, command_digest=digest)
            ):
                return await self._written(earlier)
            return Written(person_id, result.last_position, duplicate=False)
        raise AssertionError("unreachable")

    async def _written(self, result: AppendResult) -> Written:
        # The person is the stream of the command's first event: handlers save it first.
        (first,) = await self.store.read_all(result.positions[0] - 1, 1)
        return Written(first.originator_id, result.last_position, duplicate=True)

    async def _consulted(
        self,
        action: str,
        asked: dict[str, Any],
        answer: Awaitable[T],
        shown: Callable[[T], Iterable[UUID]],
    ) -> T:
        """`answer`, once the access log holds who asked for what and whose details it
        shows (nobody's, when nothing was found)."""
        try:
            result = await answer
        except NotFoundError:
            await self.access_log.record(action, asked, ())
            raise
        await self.access_log.record(action, asked, shown(result))
        return result

    async def _person(self, person_id: UUID, known_at: datetime | None = None) -> Person:
        try:
            return await self.repository.get(person_id, known_at=known_at)
        except AggregateNotFoundError:
            raise NotFoundError("person", str(person_id), known_at=known_at) from None

    async def _claim(
        self, identifier: Identifier, known_at: datetime | None = None
    ) -> IdentifierClaim | None:
        try:
            return await self.repository.get(claim_id(identifier), known_at=known_at)
        except AggregateNotFoundError:
            return None

    async def _merged_people(self, person: Person) -> list[Person]:
        """Everyone merged into `person`, directly or through another merge."""
        found: list[Person] = []
        seen = {person.id}
        waiting = list(person.absorbed)
        while waiting:
            merged_id = waiting.pop()
            if merged_id in seen:
                continue
            seen.add(merged_id)
            merged = await self._person(merged_id)
            found.append(merged)
            waiting.extend(merged.absorbed)
        return found

    async def _claims_for(
        self, person_id: UUID, identifiers: list[Identifier], *, optimistic: bool = False
    ) -> list[Aggregate]:
        """Claims `identifiers` for `person_id`, refusing any held by someone else.

        Optimistically, a claim is written as new without reading it first: most
        identifiers are new, and if one is not, the append fails as a concurrency
        conflict and the command decides again, reading every claim."""
        if optimistic:
            return [IdentifierClaim.first(identifier, person_id) for identifier in identifiers]
        changed: list[Aggregate] = []
        for identifier in identifiers:
            claim = await self._claim(identifier)
            if claim is None:
                changed.append(IdentifierClaim.first(identifier, person_id))
            elif claim.holder is None or claim.holder == person_id:
                claim.claim(person_id)
                changed.append(claim)
            else:
                raise AlreadyExistsError("identifier", str(identifier), holder=str(claim.holder))
        return changed

    # ------------------------------------------------------------------ commands

    async def register_person(
        self,
        command_id: UUID,
        name: Name,
        date_of_birth: date,
        sex: Sex,
        identifiers: list[Identifier],
        aliases: list[Name],
        occurred_at: datetime | None = None,
    ) -> Written:
        async def decide(first_attempt: bool):
            person = Person.register(
                name, date_of_birth, sex, identifiers, aliases, occurred_at or self.clock()
            )
            claims = await self._claims_for(
                person.id, sorted(set(identifiers)), optimistic=first_attempt
            )
            return person.id, [person, *claims]

        digest = asked(
            "register_person",
            name=name,
            date_of_birth=date_of_birth,
            sex=sex,
            identifiers=sorted(set(identifiers)),
            aliases=aliases,
            occurred_at=occurred_at,
        )
        return await self._run(command_id, digest, decide)

    async def record_identifier(
        self, command_id: UUID, person_id: UUID, identifier: Identifier
    ) -> Written:
        async def decide(first_attempt: bool):
            person = await self._person(person_id)
            person.record_identifier(identifier, self.clock())
            return person.id, [person, *await self._claims_for(person.id, [identifier])]

        digest = asked("record_identifier", person_id=person_id, identifier=identifier)
        return await self._run(command_id, digest, decide)

    async def retire_identifier(
        self, command_id: UUID, person_id: UUID, identifier: Identifier, reason: str
    ) -> Written:
        async def decide(first_attempt: bool):
            person = await self._person(person_id)
            person.retire_identifier(identifier, reason, self.clock())
            claim = await self._claim(identifier)
            changed: list[Aggregate] = [person]
            if claim is not None:
                claim.release(person.id)
                changed.append(claim)
            return person.id, changed

        digest = asked(
            "retire_identifier", person_id=person_id, identifier=identifier, reason=reason
        )
        return await self._run(command_id, digest, decide)

    async def _change(
        self, command_id: UUID, person_id: UUID, digest: bytes, change: Callable[[Person], None]
    ) -> Written:
        async def decide(first_attempt: bool):
            person = await self._person(person_id)
            change(person)
            return person.id, [person]

        return await self._run(command_id, digest, decide)

    async def add_alias(self, command_id: UUID, person_id: UUID, alias: Name) -> Written:
        return await self._change(
            command_id,
            person_id,
            asked("add_alias", person_id=person_id, alias=alias),
            lambda p: p.add_alias(alias, self.clock()),
        )

    async def retire_alias(
        self, command_id: UUID, person_id: UUID, alias: Name, reason: str
    ) -> Written:
        return await self._change(
            command_id,
            person_id,
            asked("retire_alias", person_id=person_id, alias=alias, reason=reason),
            lambda p: p.retire_alias(alias, reason, self.clock()),
        )

    async def correct_sex(
        self, command_id: UUID, person_id: UUID, sex: Sex, reason: str
    ) -> Written:
        return await self._change(
            command_id,
            person_id,
            asked("correct_sex", person_id=person_id, sex=sex, reason=reason),
            lambda p: p.correct_sex(sex, reason, self.clock()),
        )

    async def change_name(
        self, command_id: UUID, person_id: UUID, name: Name, reason: str
    ) -> Written:
        return await self._change(
            command_id,
            person_id,
            asked("change_name", person_id=person_id, name=name, reason=reason),
            lambda p: p.change_name(name, reason, self.clock()),
        )

    async def correct_date_of_birth(
        self, command_id: UUID, person_id: UUID, date_of_birth: date, reason: str
    ) -> Written:
        return await self._change(
            command_id,
            person_id,
            asked(
                "correct_date_of_birth",
                person_id=person_id,
                date_of_birth=date_of_birth,
                reason=reason,
            ),
            lambda p: p.correct_date_of_birth(date_of_birth, reason, self.clock()),
        )

    async def record_death(self, command_id: UUID, person_id: UUID, date_of_death: date) -> Written:
        return await self._change(
            command_id,
            person_id,
            asked("record_death", person_id=person_id, date_of_death=date_of_death),
            lambda p: p.record_death(date_of_death, self.clock()),
        )

    async def correct_death(
        self, command_id: UUID, person_id: UUID, date_of_death: date | None, reason: str
    ) -> Written:
        """Corrects a recorded death to `date_of_death`, or withdraws it (None)."""
        return await self._change(
            command_id,
            person_id,
            asked(
                "correct_death",
                person_id=person_id,
                date_of_death=date_of_death,
                withdrawn=date_of_death is None,
                reason=reason,
            ),
            lambda p: p.correct_death(date_of_death, reason, self.clock()),
        )

    async def merge_people(
        self, command_id: UUID, survivor_id: UUID, duplicate_id: UUID, reason: str
    ) -> Written:
        async def decide(first_attempt: bool):
            if survivor_id == duplicate_id:
                raise RuleViolatedError(
                    "merge_into_self", "a person cannot be merged into themself"
                )
            survivor = await self._person(survivor_id)
            duplicate = await self._person(duplicate_id)
            moving = sorted(duplicate.identifiers)
            duplicate.merge_into(
                survivor,
                reason,
                self.clock(),
                merged_into_self=await self._merged_people(duplicate),
                merged_into_survivor=await self._merged_people(survivor),
            )
            claims = []
            for identifier in moving:
                claim = await self._claim(identifier)
                if claim is not None:
                    claim.claim(survivor.id)
                    claims.append(claim)
            return survivor.id, [survivor, duplicate, *claims]

        digest = asked(
            "merge_people", survivor_id=survivor_id, duplicate_id=duplicate_id, reason=reason
        )
        return await self._run(command_id, digest, decide)

    async def unmerge_people(
        self, command_id: UUID, survivor_id: UUID, duplicate_id: UUID, reason: str
    ) -> Written:
        async def decide(first_attempt: bool):
            survivor = await self._person(survivor_id)
            duplicate = await self._person(duplicate_id)
            returning = duplicate.unmerge_from(survivor, reason, self.clock())
            claims = []
            for identifier in returning:
                claim = await self._claim(identifier)
                if claim is not None:
                    claim.claim(duplicate.id)
                    claims.append(claim)
            return duplicate.id, [duplicate, survivor, *claims]

        digest = asked(
            "unmerge_people", survivor_id=survivor_id, duplicate_id=duplicate_id, reason=reason
        )
        return await self._run(command_id, digest, decide)

    async def mark_not_duplicate(
        self, command_id: UUID, person_id: UUID, other_id: UUID, reason: str
    ) -> Written:
        async def decide(first_attempt: bool):
            person = await self._person(person_id)
            other = await self._person(other_id)
            person.mark_not_duplicate(other, reason, self.clock())
            return person.id, [person, other]

        digest = asked("mark_not_duplicate", person_id=person_id, other_id=other_id, reason=reason)
        return await self._run(command_id, digest, decide)

    # ------------------------------------------------------------------- queries

    async def get_person(self, person_id: UUID, *, known_at: datetime | None = None) -> PersonView:
        """The person, following merge redirects to the survivor; with `known_at`, as the
        record stood then (from the events recorded by then, merges included)."""
        return await self._consulted(
            "get_person",
            {"person_id": person_id, "known_at": known_at},
            self._view(person_id, known_at),
            _shown_in_view,
        )

    async def _view(self, person_id: UUID, known_at: datetime | None) -> PersonView:
        person = await self._person(person_id, known_at)
        redirected_from = None
        hops = 0
        while person.status is Status.MERGED and person.merged_into is not None:
            redirected_from = redirected_from or person.id
            person = await self._person(person.merged_into, known_at)
            hops += 1
            if hops > MAX_REDIRECTS:
                raise RuleViolatedError("redirect_loop", f"person {person_id} redirects in a loop")
        return PersonView(person, redirected_from)

    async def get_person_by_identifier(
        self, identifier: Identifier, *, known_at: datetime | None = None
    ) -> PersonView:
        """Whoever held `identifier` (now, or as the record stood at `known_at`)."""

        async def view() -> PersonView:
            return await self._view(await self._holder(identifier, known_at), known_at)

        return await self._consulted(
            "get_person",
            {"identifier": str(identifier), "known_at": known_at},
            view(),
            _shown_in_view,
        )

    async def holder_of(self, identifier: Identifier, *, known_at: datetime | None = None) -> UUID:
        """The id of the person who held `identifier` (now, or at `known_at`), as the
        claim recorded it: a merge moves the claim to the survivor."""
        return await self._consulted(
            "holder_of",
            {"identifier": str(identifier), "known_at": known_at},
            self._holder(identifier, known_at),
            lambda holder: [holder],
        )

    async def _holder(self, identifier: Identifier, known_at: datetime | None) -> UUID:
        claim = await self._claim(identifier, known_at)
        if claim is None or claim.holder is None:
            raise NotFoundError("identifier", str(identifier), known_at=known_at)
        return claim.holder

    async def person_history(
        self,
        person_id: UUID,
        *,
        known_at: datetime | None = None,
        after_version: int = 0,
        limit: int | None = None,
    ) -> PersonHistory:
        """The person's own record as known at `known_at`: the events recorded by then,
        oldest first, and the person as those events made them (None if not yet
        registered then). A merged person's record ends in its redirect; the survivor's
        history says what it absorbed.

        With `after_version` and `limit`, only that page of the events is listed; the
        person is still the one all the events known then made."""
        return await self._consulted(
            "get_person_history",
            {
                "person_id": person_id,
                "known_at": known_at,
                "after_version": after_version or None,
                "limit": limit,
            },
            self._history(person_id, known_at, after_version, limit),
            lambda history: [history.person_id] if history.person is not None else [],
        )

    async def _history(
        self, person_id: UUID, known_at: datetime | None, after_version: int, limit: int | None
    ) -> PersonHistory:
        recorded = await self.store.read_stream(person_id)
        if not recorded or not recorded[0].topic.startswith(Person.__module__ + ":Person."):
            raise NotFoundError("person", str(person_id))
        known = [r for r in recorded if known_at is None or r.recorded_at <= known_at]
        events = [self.repository.mapper.to_domain_event(r) for r in known]
        person = project_aggregate(None, events) if events else None
        page = [
            (r, e)
            for r, e in zip(known, events, strict=True)
            if r.originator_version > after_version
        ]
        more = limit is not None and len(page) > limit
        page = page[:limit]
        entries = [
            HistoryEntry(
                position=r.position,
                version=r.originator_version,
                event=type(e).__name__,
                occurred_at=getattr(e, "occurred_at", e.timestamp),
                recorded_at=r.recorded_at,
                actor=r.actor,
                facts={k: v for k, v in vars(e).items() if k not in _ENVELOPE},
                recorded=r,
            )
            for r, e in page
        ]
        return PersonHistory(
            person_id,
            known_at,
            entries,
            person,
            len(recorded) - len(known),
            next_after_version=page[-1][0].originator_version if more else 0,
        )

    async def status(self) -> ServiceStatus:
        """Where the store and the search index have got to, and what the index holds."""
        head = await self.store.head_position()
        newest = await self.store.read_all(head - 1, 1) if head else []
        return ServiceStatus(
            head_position=head,
            newest_recorded_at=newest[0].recorded_at if newest else None,
            index_position=await self.tracking.position(PROJECTION_NAME, self.store.schema) or 0,
            index=await self.search_index.counts(),
        )

    async def verify_search_index(
        self, *, progress: Callable[[int, int], None] | None = None
    ) -> ProjectionCheck:
        """Rebuilds the search index from the events beside the live one, and compares.
        Rows that differ are shown as examples; whose they are goes in the access log."""
        check = await self.search_index.verify(self.store, self.tracking, progress=progress)
        shown = [
            UUID(found)
            for table in check.tables
            for row in (*table.only_live_examples, *table.only_rebuilt_examples)
            for found in _UUIDS.findall(row)
        ]
        if shown:
            await self.access_log.record("verify_search_index", {"position": check.position}, shown)
        return check

    async def wait_for_index(self, position: int, *, timeout: float = 5.0) -> None:
        """Returns once the search index includes every write up to `position`.

        A position no write has reached yet is refused at once rather than waited for;
        an index still behind after `timeout` seconds raises ProjectionLagError."""
        if position <= 0:
            return
        indexed = await self.tracking.position(PROJECTION_NAME, self.store.schema) or 0
        if indexed >= position:
            return
        if position > (head := await self.store.head_position()):
            raise InvalidFieldError(
                ("min_position", f"no write has reached position {position} yet (newest: {head})")
            )
        await self.tracking.wait(PROJECTION_NAME, self.store.schema, position, timeout=timeout)

    async def search_people(
        self,
        *,
        names: list[Name],
        date_of_birth: date | None,
        identifiers: list[Identifier],
        limit: int = 10,
        min_position: int = 0,
    ) -> Found:
        await self.wait_for_index(min_position)
        query = _search_profile(names, date_of_birth, identifiers)
        return await self._consulted(
            "search_people",
            _search_asked(names, date_of_birth, identifiers),
            self.search_index.search(query, limit=limit),
            _shown_in_found,
        )

    async def search_people_as_known_at(
        self,
        known_at: datetime,
        *,
        names: list[Name],
        date_of_birth: date | None,
        identifiers: list[Identifier],
        limit: int = 10,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[int, Found]:
        """What a search made at `known_at` would have found: the search index is rebuilt
        from the events recorded by then, beside the live one, and searched. Returns the
        position it was rebuilt to and the candidates (scored by today's rules). Reads
        every event up to then: for serious case reviews, not for serving."""
        position = await self.store.position_at(known_at)
        query = _search_profile(names, date_of_birth, identifiers)
        found = await self._consulted(
            "search_people",
            {**_search_asked(names, date_of_birth, identifiers), "known_at": known_at},
            self.search_index.search_as_at(
                self.store, position, query, limit=limit, progress=progress
            ),
            _shown_in_found,
        )
        return position, found

    async def list_possible_duplicates(
        self,
        person_id: UUID,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        limit: int = 10,
        min_position: int = 0,
    ) -> Found:
        await self.wait_for_index(min_position)

        async def duplicates() -> tuple[PersonView, Found]:
            view = await self._view(person_id, None)
            found = await self.search_index.profile_of(view.person.id)
            if found is None:
                raise NotFoundError("person", f"{person_id} (not yet in the search index)")
            profile, not_duplicates = found
            searched = await self.search_index.search(
                profile, limit=limit + len(not_duplicates) + 1
            )
            candidates = [
                c
                for c in searched.candidates
                if c.person_id != view.person.id
                and c.person_id not in not_duplicates
                and c.match.score >= threshold
            ]
            return view, Found(candidates[:limit], incomplete=searched.incomplete)

        _, duplicates_found = await self._consulted(
            "list_possible_duplicates",
            {"person_id": person_id, "threshold": threshold},
            duplicates(),
            lambda found: [*_shown_in_view(found[0]), *_shown_in_found(found[1])],
        )
        return duplicates_found
