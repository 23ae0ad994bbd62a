"""Proves a store is as it was recorded: positions gapless up to the head, recording
times never going backwards, and every stream's hash chain intact."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from libs.eventstore.hashchain import verify_stream
from libs.eventstore.recorder import EVENT_COLUMNS, EventStore, quote_schema
from libs.eventstore.records import RecordedEvent


@dataclass
class AuditReport:
    events_checked: int = 0
    streams_checked: int = 0
    head_position: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


async def audit_store(
    store: EventStore, *, progress: Callable[[int, int], None] | None = None
) -> AuditReport:
    s = quote_schema(store.schema)
    report = AuditReport(head_position=await store.head_position())
    async with (
        store.pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        count, highest = await conn.fetchrow(
            f"SELECT count(*), coalesce(max(notification_id), 0) FROM {s}.stored_events"
        )
        if highest != report.head_position or count != highest:
            gaps = await conn.fetch(
                f"SELECT prev + 1 AS first, notification_id - 1 AS last FROM ("
                f"  SELECT notification_id, coalesce(lag(notification_id) OVER "
                f"  (ORDER BY notification_id), 0) AS prev FROM {s}.stored_events) AS t "
                f"WHERE notification_id - prev > 1 LIMIT 100"
            )
            for first, last in gaps:
                report.problems.append(f"positions {first}..{last} are missing")
            if highest < report.head_position:
                report.problems.append(
                    f"positions {highest + 1}..{report.head_position} are missing "
                    "(the head says they were recorded)"
                )
        backwards = await conn.fetch(
            f"SELECT notification_id FROM (SELECT notification_id, recorded_at, "
            f"lag(recorded_at) OVER (ORDER BY notification_id) AS prev "
            f"FROM {s}.stored_events) AS t WHERE recorded_at < prev LIMIT 100"
        )
        for (position,) in backwards:
            report.problems.append(f"position {position} was recorded before its predecessor")

        stream: list[RecordedEvent] = []
        cursor = conn.cursor(
            f"SELECT {EVENT_COLUMNS} FROM {s}.stored_events "
            f"ORDER BY originator_id, originator_version",
            prefetch=5000,
            record_class=RecordedEvent,
        )
        async for event in cursor:
            if stream and stream[-1].originator_id != event.originator_id:
                _check(stream, report)
                if progress:
                    progress(report.events_checked, count)
                stream = []
            stream.append(event)
        if stream:
            _check(stream, report)
        if progress:
            progress(report.events_checked, count)
    return report


def _check(stream: list[RecordedEvent], report: AuditReport) -> None:
    report.problems.extend(verify_stream(stream))
    report.events_checked += len(stream)
    report.streams_checked += 1
