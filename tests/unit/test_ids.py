from uuid import RFC_4122, UUID

from libs.domain.ids import time_ordered_id

# 2026-12-02 01:00:00.123456789 UTC
NOW_NS = 1_796_173_200_123_456_789


def test_is_a_version_7_rfc_9562_uuid():
    made = time_ordered_id()
    assert made.version == 7
    assert made.variant == RFC_4122  # RFC 9562 keeps the variant of RFC 4122


def test_leads_with_the_unix_time_in_milliseconds():
    made = time_ordered_id(NOW_NS)
    assert made.int >> 80 == NOW_NS // 1_000_000
    assert str(made).startswith(f"{NOW_NS // 1_000_000:012x}"[:8])


def test_a_later_millisecond_sorts_later_as_uuid_and_as_text():
    earlier = [time_ordered_id(NOW_NS) for _ in range(200)]
    later = [time_ordered_id(NOW_NS + 1_000_000) for _ in range(200)]
    assert max(earlier) < min(later)
    assert max(map(str, earlier)) < min(map(str, later))
    assert max(e.bytes for e in earlier) < min(x.bytes for x in later)  # PostgreSQL's order


def test_ids_made_in_the_same_millisecond_differ():
    made = {time_ordered_id(NOW_NS) for _ in range(10_000)}
    assert len(made) == 10_000


def test_round_trips_through_its_text():
    made = time_ordered_id()
    assert UUID(str(made)) == made
