"""The eventsourcing library's own recorder test cases, run against our event store.

Which cases run: AggregateRecorderTestCase, ApplicationRecorderTestCase (including its
optional subscribe case), TrackingRecorderTestCase and NonInterleavingNotificationIDsBaseCase.
ProcessRecorderTestCase does not apply: it records tracking and new events in one
`insert_events` call, a process-application pattern we do not offer; our projections track
positions with TrackingStore instead, covered by TrackingRecorderTestCase and our own tests.
"""

from __future__ import annotations

import os
import secrets

import pytest
from eventsourcing.tests.persistence import (
    AggregateRecorderTestCase,
    ApplicationRecorderTestCase,
    NonInterleavingNotificationIDsBaseCase,
    TrackingRecorderTestCase,
)

from tests.contract.sync_adapter import SyncStore


class _FreshStore:
    """Each test gets a store in a new schema, as the library's cases expect an empty one."""

    recorder_class: type[SyncStore] = SyncStore

    def create_recorder(self) -> SyncStore:
        dsn = os.environ["THROUGHLINE_TEST_DATABASE_URL"]
        recorder = self.recorder_class(dsn, f"conf_{secrets.token_hex(6)}")
        self.addCleanup(recorder.close)
        return recorder


class _AggregateOnly(SyncStore):
    """As an AggregateRecorder, insert_events returns no notification ids."""

    def insert_events(self, stored_events, **kwargs):  # type: ignore[override]
        super().insert_events(stored_events)


@pytest.mark.usefixtures("test_database_url")
class TestAggregateRecorderCases(_FreshStore, AggregateRecorderTestCase):
    recorder_class = _AggregateOnly


@pytest.mark.usefixtures("test_database_url")
class TestApplicationRecorderCases(_FreshStore, ApplicationRecorderTestCase):
    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


@pytest.mark.usefixtures("test_database_url")
class TestTrackingRecorderCases(_FreshStore, TrackingRecorderTestCase):
    pass


@pytest.mark.usefixtures("test_database_url")
class TestNonInterleavingNotificationIDs(_FreshStore, NonInterleavingNotificationIDsBaseCase):
    pass
