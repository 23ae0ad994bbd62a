"""Command digests are stored with every event, and a retry is recognised by its digest:
a deploy that changed how a command's digest is computed would turn every retry that
spans it into a refused "command id reused" error. These pin the canonical form digested
today, for each kind of value a command carries (names, dates, times, enums,
identifiers, UUIDs)."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from uuid import UUID

from services.identity.application import asked
from services.identity.domain import Name, Sex
from services.identity.identifiers import parse_identifier


def digest_of(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def test_a_registration_is_digested_in_the_canonical_form_earlier_deploys_used():
    digest = asked(
        "register_person",
        name=Name("Load", "Test1"),
        date_of_birth=date(1980, 1, 1),
        sex=Sex.MALE,
        identifiers=[parse_identifier("NOMS", "A1234BC"), parse_identifier("CRN", "X123456")],
        aliases=[Name("Lode", "Test")],
        occurred_at=datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
    )
    assert digest == digest_of(
        '["identity.register_person",{"aliases":[{"family_name":"Test","given_names":"Lode"}],'
        '"date_of_birth":"1980-01-01","identifiers":[{"type":"NOMS","value":"A1234BC"},'
        '{"type":"CRN","value":"X123456"}],"name":{"family_name":"Test1","given_names":"Load"},'
        '"occurred_at":"2026-11-30T12:00:00+00:00","sex":"MALE"}]'
    )


def test_a_merge_is_digested_in_the_canonical_form_earlier_deploys_used():
    digest = asked(
        "merge_people",
        survivor_id=UUID("6f1c1a1e-0000-4000-8000-000000000001"),
        duplicate_id=UUID("6f1c1a1e-0000-4000-8000-000000000002"),
        reason="same",
    )
    assert digest == digest_of(
        '["identity.merge_people",{"duplicate_id":"6f1c1a1e-0000-4000-8000-000000000002",'
        '"reason":"same","survivor_id":"6f1c1a1e-0000-4000-8000-000000000001"}]'
    )


def test_an_argument_left_unset_leaves_the_digest_as_it_was_before_the_argument_existed():
    without = asked("register_person", name=Name("Ann", "Example"), date_of_birth=None)
    assert without == asked("register_person", name=Name("Ann", "Example"))
    assert without == digest_of(
        '["identity.register_person",{"name":{"family_name":"Example","given_names":"Ann"}}]'
    )
