"""An async event store on asyncpg, table-compatible with the eventsourcing library's
PostgreSQL recorders."""

from libs.eventstore.access_log import Access, AccessLog, create_access_log
from libs.eventstore.audit import (
    AuditReport,
    ProjectionCheck,
    TableComparison,
    audit_store,
    projection_as_at,
    scratch_schema,
    verify_projection,
)
from libs.eventstore.database import create_pool
from libs.eventstore.errors import (
    CommandReusedError,
    ConcurrencyError,
    EventStoreClosedError,
    EventStoreError,
    InvalidAppendError,
    ProjectionLagError,
    UnreadableStoreError,
)
from libs.eventstore.keyring import KeyRing, KeyRingError, key_usage
from libs.eventstore.mapper import check_readable, create_mapper
from libs.eventstore.projection import Projection, ProjectionRunner
from libs.eventstore.recorder import UNSET, EventStore, create_schema
from libs.eventstore.records import AppendResult, RecordedEvent, StreamHead, command_digest
from libs.eventstore.repository import Repository
from libs.eventstore.tracking import TrackingConflictError, TrackingStore
from libs.eventstore.window import AdaptiveWindow

__all__ = [
    "UNSET",
    "Access",
    "AccessLog",
    "AdaptiveWindow",
    "AppendResult",
    "AuditReport",
    "CommandReusedError",
    "ConcurrencyError",
    "EventStore",
    "EventStoreClosedError",
    "EventStoreError",
    "InvalidAppendError",
    "KeyRing",
    "KeyRingError",
    "Projection",
    "ProjectionCheck",
    "ProjectionLagError",
    "ProjectionRunner",
    "RecordedEvent",
    "Repository",
    "StreamHead",
    "TableComparison",
    "TrackingConflictError",
    "TrackingStore",
    "UnreadableStoreError",
    "audit_store",
    "check_readable",
    "command_digest",
    "create_access_log",
    "create_mapper",
    "create_pool",
    "create_schema",
    "key_usage",
    "projection_as_at",
    "scratch_schema",
    "verify_projection",
]
