"""The async repository: rebuilds aggregates from their events (from a snapshot when one
exists) and saves their pending events, stamped with the actor and trace of the request."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, project_aggregate
from eventsourcing.domain import Aggregate, Snapshot
from eventsourcing.persistence import Mapper, StoredEvent

from libs.eventstore.context import current_actor, current_trace_id
from libs.eventstore.recorder import EventStore, quote_schema
from libs.eventstore.records import AppendResult

A = TypeVar("A", bound=Aggregate)


class Repository:
    def __init__(self, store: EventStore, mapper: Mapper, *, snapshots: bool = True) -> None:
        self.store = store
        self.mapper = mapper
        # Without snapshots a read is one query; aggregates with short streams need none.
        self.snapshots = snapshots
        s = quote_schema(store.schema)
        self._last_snapshot = (
            f"SELECT originator_id, originator_version, topic, state FROM {s}.snapshots "
            f"WHERE originator_id = $1 AND originator_version <= $2 "
            f"ORDER BY originator_version DESC LIMIT 1"
        )
        self._insert_snapshot = (
            f"INSERT INTO {s}.snapshots (originator_id, originator_version, topic, state) "
            f"VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
        )

    async def get(
        self,
        aggregate_id: UUID,
        *,
        version: int | None = None,
        known_at: datetime | None = None,
    ) -> Any:
        """The aggregate as of its latest version, or as of `version`, or as it was known
        at `known_at`: from the events recorded by then.

        Raises AggregateNotFoundError if it has no events (up to that version or time)."""
        upto = version if version is not None else 2**63 - 1
        aggregate = None
        after = None
        row = None
        if self.snapshots and known_at is None:
            row = await self.store.pool.fetchrow(self._last_snapshot, aggregate_id, upto)
        if row is not None:
            snapshot = self.mapper.to_domain_event(StoredEvent(*row))
            aggregate = snapshot.mutate(None)
            after = row["originator_version"]
        recorded = await self.store.read_stream(
            aggregate_id, after_version=after, upto_version=version
        )
        if known_at is not None:
            # A stream's recording times rise with its versions (positions are handed
            # out in commit order, and recorded_at never decreases along them).
            recorded = [event for event in recorded if event.recorded_at <= known_at]
        events = (self.mapper.to_domain_event(event) for event in recorded)
        aggregate = project_aggregate(aggregate, events)
        if aggregate is None:
            raise AggregateNotFoundError(aggregate_id)
        return aggregate

    async def contains(self, aggregate_id: UUID) -> bool:
        return bool(await self.store.read_stream(aggregate_id, limit=1))

    async def save(
        self,
        *aggregates: Aggregate,
        command_id: UUID | None = None,
        command_digest: bytes | None = None,
    ) -> AppendResult:
        """Appends the aggregates' pending events in one atomic append (see
        `EventStore.append` for what `command_id` and `command_digest` do)."""
        stored = [
            self.mapper.to_stored_event(event)
            for aggregate in aggregates
            for event in aggregate.collect_events()
        ]
        actor = current_actor.get()
        return await self.store.append(
            stored,
            command_id=command_id,
            command_digest=command_digest,
            actor=actor.subject if actor else None,
            trace_id=current_trace_id.get(),
        )

    async def take_snapshot(self, aggregate_id: UUID, *, version: int | None = None) -> None:
        aggregate = await self.get(aggregate_id, version=version)
        stored = self.mapper.to_stored_event(Snapshot.take(aggregate))
        await self.store.pool.execute(
            self._insert_snapshot,
            stored.originator_id,
            stored.originator_version,
            stored.topic,
            stored.state,
        )
