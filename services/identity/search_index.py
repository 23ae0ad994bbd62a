"""The search index: a projection of Person events into tables with precomputed blocking
keys, and the queries that find and score candidates from it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from pathlib import Path
from uuid import UUID

import asyncpg
from eventsourcing.persistence import Mapper

from libs.eventstore import (
    EventStore,
    ProjectionCheck,
    RecordedEvent,
    Repository,
    TrackingStore,
    projection_as_at,
    verify_projection,
)
from libs.eventstore.recorder import quote_schema
from services.identity.domain import MAX_REDIRECTS, Name, Person, Status
from services.identity.identifiers import IDENTIFIER_TYPES, Identifier
from services.identity.matching import (
    Match,
    NameKey,
    Profile,
    date_variants,
    phonetic,
    prefix,
    score,
)

SQL = Path(__file__).parent / "sql" / "search_index.sql"
# For an index made before search_person held each person's names and identifiers.
UPGRADE_SQL = Path(__file__).parent / "sql" / "search_person_whole.sql"
PROJECTION_NAME = "identity_search"
CANDIDATE_LIMIT = 500
# A family name alone, with no date of birth, can sound like tens of thousands of people.
# A rare name's bearers are all found; for a common one, reading 500 rather than 100 would
# triple the search's time (measured over a million people) and still show an arbitrary
# few of them, all scored alike: the caller has to narrow the search either way.
BROAD_CANDIDATE_LIMIT = 100
TABLES = ("search_person", "search_name", "search_identifier")
UNIT_SEPARATOR = "\x1f"  # chr(31) in SQL

log = logging.getLogger(__name__)


async def create_search_index(conn: asyncpg.Connection, schema: str) -> None:
    """Creates the index's tables if they are missing, and upgrades older ones."""
    quoted = quote_schema(schema)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"search:{schema}")
        older = await conn.fetchval(
            """SELECT NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = t.oid
                                    AND attname = 'names' AND NOT attisdropped)
               FROM (SELECT to_regclass($1) AS oid) AS t WHERE t.oid IS NOT NULL""",
            f"{quoted}.search_person",
        )
        await conn.execute(SQL.read_text().format(schema=quoted))
        if older:
            log.info("search index in %s: adding names and identifiers to people's rows", schema)
            started = time.monotonic()
            await conn.execute(UPGRADE_SQL.read_text().format(schema=quoted))
            log.info("search index in %s upgraded in %.1f s", schema, time.monotonic() - started)


@dataclass(frozen=True)
class Candidate:
    person_id: UUID
    given_names: str
    family_name: str
    date_of_birth: date
    match: Match


@dataclass(frozen=True)
class Found:
    """A search's candidates, best first. `incomplete` when a block had more people than
    it may read, so that some who match may be missing: the search needs narrowing."""

    candidates: list[Candidate]
    incomplete: bool = False


@dataclass(frozen=True)
class IndexCounts:
    active_people: int
    merged_people: int
    identifiers: int


@dataclass(frozen=True)
class Indexed:
    """What the index keeps of a person."""

    id: UUID
    version: int
    name: Name
    date_of_birth: date
    sex: str
    status: str
    merged_into: UUID | None
    not_duplicates: tuple[UUID, ...]
    identifiers: tuple[Identifier, ...]
    aliases: tuple[Name, ...]

    @classmethod
    def of(cls, person: Person) -> Indexed:
        return cls(
            person.id,
            person.version,
            person.name,
            person.date_of_birth,
            person.sex.value,
            person.status.value,
            person.merged_into,
            tuple(sorted(person.not_duplicates)),
            tuple(sorted(person.identifiers)),
            tuple(person.aliases),
        )

    @classmethod
    def registered(cls, event: Person.Registered) -> Indexed:
        """From a registration alone: cheaper than building the aggregate."""
        return cls(
            event.originator_id,
            event.originator_version,
            Name.from_dict(event.name),
            event.date_of_birth,
            event.sex,
            Status.ACTIVE.value,
            None,
            (),
            tuple(sorted(Identifier(IDENTIFIER_TYPES[t], v) for t, v in event.identifiers)),
            tuple(Name.from_dict(a) for a in event.aliases),
        )

    @cached_property
    def name_keys(self) -> list[NameKey]:
        """The current name, then the aliases, prepared for comparison."""
        return [NameKey.of(n.given_names, n.family_name) for n in [self.name, *self.aliases]]

    def person_row(self) -> tuple:
        # Lists travel as one string each (unnest would flatten an array of arrays):
        # not-duplicates comma-separated; names and identifiers, which hold letters,
        # spaces, digits, '/' and '|', separated by the unit separator.
        active = self.status == Status.ACTIVE.value
        names = [f"{key.given}|{key.family}" for key in self.name_keys] if active else []
        identifiers = [f"{i.type.value}|{i.value}" for i in self.identifiers] if active else []
        return (
            self.id,
            self.name.given_names,
            self.name.family_name,
            self.date_of_birth,
            self.sex,
            self.status,
            self.merged_into,
            ",".join(map(str, self.not_duplicates)),
            self.version,
            UNIT_SEPARATOR.join(names),
            UNIT_SEPARATOR.join(identifiers),
        )

    def name_rows(self) -> list[tuple]:
        rows = []
        for ordinal, key in enumerate(self.name_keys):
            rows.append(
                (
                    self.id,
                    ordinal,
                    key.given,
                    key.family,
                    prefix(key.given),
                    prefix(key.family),
                    phonetic(key.given),
                    phonetic(key.family),
                    self.date_of_birth,
                )
            )
        return rows


class SearchIndex:
    """The projection (apply/clear) and the queries over it."""

    name = PROJECTION_NAME

    def __init__(self, pool: asyncpg.Pool, schema: str, mapper: Mapper, repository: Repository):
        self.pool = pool
        self.mapper = mapper
        self.repository = repository
        s = quote_schema(schema)
        self._upsert_person = f"""
            INSERT INTO {s}.search_person AS p (person_id, given_names, family_name,
                date_of_birth, sex, status, merged_into, not_duplicates, version, names,
                identifiers)
            SELECT person_id, given_names, family_name, date_of_birth, sex, status,
                   merged_into, string_to_array(not_duplicates, ',')::uuid[], version,
                   string_to_array(names, chr(31)), string_to_array(identifiers, chr(31))
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::date[], $5::text[],
                $6::text[], $7::uuid[], $8::text[], $9::int8[], $10::text[], $11::text[])
                AS t(person_id, given_names, family_name, date_of_birth, sex, status,
                     merged_into, not_duplicates, version, names, identifiers)
            ON CONFLICT (person_id) DO UPDATE SET given_names = excluded.given_names,
                family_name = excluded.family_name, date_of_birth = excluded.date_of_birth,
                sex = excluded.sex, status = excluded.status,
                merged_into = excluded.merged_into, not_duplicates = excluded.not_duplicates,
                version = excluded.version, names = excluded.names,
                identifiers = excluded.identifiers
        """
        self._counts = f"""
            SELECT count(*) FILTER (WHERE status = 'ACTIVE'),
                   count(*) FILTER (WHERE status = 'MERGED'),
                   (SELECT count(*) FROM {s}.search_identifier)
            FROM {s}.search_person
        """
        # One statement per person, run as a batch: an equality on the key keeps even a
        # generic plan made while the table was small on its index (`= ANY` did not).
        self._delete_names = f"DELETE FROM {s}.search_name WHERE person_id = $1"
        self._insert_names = f"""
            INSERT INTO {s}.search_name SELECT * FROM unnest($1::uuid[], $2::int4[],
                $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                $9::date[])
        """
        self._delete_identifiers = f"DELETE FROM {s}.search_identifier WHERE person_id = $1"
        self._insert_identifiers = f"""
            INSERT INTO {s}.search_identifier SELECT * FROM unnest($1::text[], $2::text[],
                $3::uuid[])
        """
        self._clear = [f"TRUNCATE {', '.join(f'{s}.{table}' for table in TABLES)}"]
        # One round trip: block, then load each candidate with its names and identifiers.
        # Blocks: a shared identifier; the date of birth with a name's prefix (either
        # name, so swapped names are found too); the family name's sound with the date or
        # one of its typing slips (the given name's, when the query gives no family
        # name); without a date, both names' sounds, or the family name's alone when
        # that is all the query gives. Sounds are also read with the query's names
        # swapped (its given name as the family name). A date alone must be exact.
        # Lookups by a key the query gives read each key's entries through its own
        # LATERAL ... OFFSET 0 probe, and each candidate likewise: a plan PostgreSQL
        # makes once, while the tables are small, then keeps (a generic plan) cannot
        # turn them into scans of the whole table.
        self._search = f"""
            WITH blocked AS (
                (SELECT i.person_id, 0 AS block, NULL::int AS most
                  FROM unnest($1::text[], $2::text[]) AS asked(type, value)
                  CROSS JOIN LATERAL (SELECT person_id FROM {s}.search_identifier
                    WHERE type = asked.type AND value = asked.value OFFSET 0) AS i)
                UNION ALL
                (SELECT person_id, 1, {CANDIDATE_LIMIT} FROM {s}.search_name
                  WHERE $3::date IS NOT NULL AND date_of_birth = $3
                    AND (family_prefix = ANY($4::text[]) OR given_prefix = ANY($4::text[]))
                  LIMIT {CANDIDATE_LIMIT + 1})
                UNION ALL
                (SELECT n.person_id, 2, {CANDIDATE_LIMIT}
                  FROM (SELECT DISTINCT unnest($5::text[] || $7::text[])) AS sound(family)
                  CROSS JOIN (SELECT DISTINCT unnest($6::date[])) AS day(dob)
                  CROSS JOIN LATERAL (SELECT person_id FROM {s}.search_name
                    WHERE family_phonetic = sound.family AND date_of_birth = day.dob
                      AND (family_phonetic = ANY($5::text[])
                           OR given_phonetic = ANY($5::text[]))
                    OFFSET 0) AS n
                  LIMIT {CANDIDATE_LIMIT + 1})
                UNION ALL
                (SELECT n.person_id, 3, {CANDIDATE_LIMIT}
                  FROM unnest($7::text[]) AS sound(given)
                  CROSS JOIN (SELECT DISTINCT unnest($6::date[])) AS day(dob)
                  CROSS JOIN LATERAL (SELECT person_id FROM {s}.search_name
                    WHERE given_phonetic = sound.given AND date_of_birth = day.dob
                    OFFSET 0) AS n
                  WHERE cardinality($5::text[]) = 0
                  LIMIT {CANDIDATE_LIMIT + 1})
                UNION ALL
                (SELECT n.person_id, 4, {CANDIDATE_LIMIT}
                  FROM (SELECT f, g FROM unnest($5::text[]) f, unnest($7::text[]) g
                        UNION SELECT g, f FROM unnest($5::text[]) f, unnest($7::text[]) g)
                    AS sounds(family, given)
                  CROSS JOIN LATERAL (SELECT person_id FROM {s}.search_name
                    WHERE family_phonetic = sounds.family AND given_phonetic = sounds.given
                    OFFSET 0) AS n
                  WHERE $3::date IS NULL
                  LIMIT {CANDIDATE_LIMIT + 1})
                UNION ALL
                (SELECT n.person_id, 5, {BROAD_CANDIDATE_LIMIT}
                  FROM unnest($5::text[]) AS sound(family)
                  CROSS JOIN LATERAL (SELECT person_id FROM {s}.search_name
                    WHERE family_phonetic = sound.family OFFSET 0) AS n
                  WHERE $3::date IS NULL AND cardinality($7::text[]) = 0
                  LIMIT {BROAD_CANDIDATE_LIMIT + 1})
                UNION ALL
                (SELECT person_id, 6, {CANDIDATE_LIMIT} FROM {s}.search_name
                  WHERE $3::date IS NOT NULL AND cardinality($5::text[]) = 0
                    AND date_of_birth = $3
                  LIMIT {CANDIDATE_LIMIT + 1})
            )
            SELECT p.person_id, p.given_names, p.family_name, p.date_of_birth, p.sex,
                   p.names, p.identifiers,
                   -- Each block reads one name more than it may use: finding it, the
                   -- block has left some unread.
                   EXISTS (SELECT FROM blocked GROUP BY block, most
                           HAVING count(*) > most) AS incomplete
            FROM (SELECT DISTINCT person_id FROM blocked) AS b
            CROSS JOIN LATERAL (SELECT * FROM {s}.search_person
              WHERE person_id = b.person_id AND status = 'ACTIVE' OFFSET 0) AS p
        """
        # The people marked as not this person: marked on it, or on anyone merged into
        # it (directly or through another merge); each followed along its own merges
        # to whoever it is part of now. Each step reads by key, as the search does.
        self._kept_apart = f"""
            WITH RECURSIVE merged(person_id) AS (
                SELECT $1::uuid
                UNION
                SELECT p.person_id FROM merged m
                CROSS JOIN LATERAL (SELECT person_id FROM {s}.search_person
                  WHERE merged_into = m.person_id AND status = 'MERGED' OFFSET 0) AS p
            ), marked(person_id, hops) AS (
                SELECT DISTINCT unnest(p.not_duplicates), 0
                FROM merged m
                CROSS JOIN LATERAL (SELECT not_duplicates FROM {s}.search_person
                  WHERE person_id = m.person_id OFFSET 0) AS p
                UNION
                SELECT p.merged_into, m.hops + 1 FROM marked m
                CROSS JOIN LATERAL (SELECT merged_into FROM {s}.search_person
                  WHERE person_id = m.person_id AND status = 'MERGED'
                    AND merged_into IS NOT NULL OFFSET 0) AS p
                WHERE m.hops < {MAX_REDIRECTS}
            )
            SELECT coalesce(array_agg(DISTINCT person_id), '{{}}') FROM marked
        """
        self._profile = f"""
            SELECT p.date_of_birth, p.sex, p.names, p.identifiers
            FROM {s}.search_person p WHERE p.person_id = $1
        """

    # ---------------------------------------------------------------- projection

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        latest: dict[UUID, RecordedEvent] = {}
        for recorded in events:
            if recorded.topic.startswith(Person.__module__ + ":Person."):
                latest[recorded.originator_id] = recorded
        people: list[Indexed] = []
        for recorded in latest.values():
            if recorded.originator_version == 1:
                people.append(Indexed.registered(self.mapper.to_domain_event(recorded)))
            else:
                person = await self.repository.get(
                    recorded.originator_id, version=recorded.originator_version
                )
                people.append(Indexed.of(person))
        if people:
            await self._write(conn, people)

    async def _write(self, conn: asyncpg.Connection, people: list[Indexed]) -> None:
        await conn.execute(
            self._upsert_person, *zip(*(p.person_row() for p in people), strict=True)
        )
        known = [(p.id,) for p in people if p.version > 1]
        if known:  # a registration has no earlier rows to replace
            await conn.executemany(self._delete_names, known)
            await conn.executemany(self._delete_identifiers, known)
        active = [p for p in people if p.status == Status.ACTIVE.value]
        name_rows = [row for p in active for row in p.name_rows()]
        if name_rows:
            await conn.execute(self._insert_names, *zip(*name_rows, strict=True))
        identifier_rows = [(i.type.value, i.value, p.id) for p in active for i in p.identifiers]
        if identifier_rows:
            await conn.execute(self._insert_identifiers, *zip(*identifier_rows, strict=True))

    async def clear(self, conn: asyncpg.Connection) -> None:
        for statement in self._clear:
            await conn.execute(statement)

    async def verify(
        self,
        store: EventStore,
        tracking: TrackingStore,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> ProjectionCheck:
        """Rebuilds this index from `store`'s events beside the live one and compares
        them (see `verify_projection`); the live index keeps serving meanwhile."""
        return await verify_projection(
            store, tracking, self.name, TABLES, self._beside, progress=progress
        )

    async def search_as_at(
        self,
        store: EventStore,
        position: int,
        query: Profile,
        *,
        limit: int = 10,
        progress: Callable[[int, int], None] | None = None,
    ) -> Found:
        """Searches the index as it stood when `store`'s head was at `position`: rebuilt
        from the events up to there beside the live one, which keeps serving, and dropped
        after (see `projection_as_at`). Candidates are found and scored by today's
        matching rules."""
        async with projection_as_at(store, self._beside, position, progress=progress) as index:
            return await index.search(query, limit=limit)

    async def _beside(self, conn: asyncpg.Connection, schema: str) -> SearchIndex:
        """An empty index in `schema`, beside this one."""
        await create_search_index(conn, schema)
        return SearchIndex(self.pool, schema, self.mapper, self.repository)

    # ------------------------------------------------------------------- queries

    async def search(self, query: Profile, *, limit: int = 10) -> Found:
        rows = await self._candidates(query)
        ranked = []
        for row in rows:
            match = score(query, _profile(row))
            ranked.append(
                Candidate(
                    row["person_id"],
                    row["given_names"],
                    row["family_name"],
                    row["date_of_birth"],
                    match,
                )
            )
        ranked.sort(key=lambda c: (-c.match.score, c.family_name, c.given_names, c.person_id))
        return Found(ranked[:limit], incomplete=bool(rows) and rows[0]["incomplete"])

    async def _candidates(self, query: Profile) -> list[asyncpg.Record]:
        identifiers = sorted(query.identifiers)
        prefixes = sorted(
            {prefix(n.family) for n in query.names} | {prefix(n.given) for n in query.names} - {""}
        )
        family_phonetics = sorted({phonetic(n.family) for n in query.names} - {""})
        given_phonetics = sorted({phonetic(n.given) for n in query.names} - {""})
        dob = query.date_of_birth
        dobs = [dob, *date_variants(dob)] if dob else []
        return await self.pool.fetch(
            self._search,
            [i.type.value for i in identifiers],
            [i.value for i in identifiers],
            dob,
            prefixes,
            family_phonetics,
            dobs,
            given_phonetics,
        )

    async def counts(self) -> IndexCounts:
        """How many people the index holds, active and merged, and identifiers held."""
        return IndexCounts(*await self.pool.fetchrow(self._counts))

    async def profile_of(self, person_id: UUID) -> tuple[Profile, set[UUID]] | None:
        """The indexed profile of a person and the people marked as not them."""
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await conn.fetchrow(self._profile, person_id)
            if row is None:
                return None
            kept_apart = await conn.fetchval(self._kept_apart, person_id)
        return _profile(row), set(kept_apart)


def _profile(row: asyncpg.Record) -> Profile:
    names = [NameKey(*entry.split("|", 1)) for entry in row["names"]]
    identifiers = set()
    for entry in row["identifiers"]:
        kind, value = entry.split("|", 1)
        identifiers.add(Identifier(IDENTIFIER_TYPES[kind], value))
    return Profile(
        names=names, date_of_birth=row["date_of_birth"], sex=row["sex"], identifiers=identifiers
    )
