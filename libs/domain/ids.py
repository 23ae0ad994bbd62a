"""Ids for new aggregates.

A person's id is the key of their stream in the event store and of their rows in every
projection. Random ids (version 4) put each new row on a random page of every index
keyed by them: over a million people those pages are seldom cached, so each registration
reads and dirties pages all over the indexes, and after each checkpoint writes whole
pages to the WAL. Ids that sort by the time they were made put new rows together at the
end of those indexes instead.
"""

from __future__ import annotations

import os
import time
from uuid import UUID

_MILLISECONDS = (1 << 48) - 1
_LOW_62 = (1 << 62) - 1


def time_ordered_id(now_ns: int | None = None) -> UUID:
    """A new UUID version 7 (RFC 9562, section 5.7): the Unix time in milliseconds (48
    bits), then 74 random bits. Ids made in a later millisecond sort after earlier ones,
    as text and as PostgreSQL's uuid; within one millisecond their order is random
    (nothing relies on it: the event store's positions give the order of events). The
    time is that of the machine that made the id and says when it was made, which the
    events' own times say anyway. `now_ns` (nanoseconds since the epoch) is for tests."""
    milliseconds = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    random = int.from_bytes(os.urandom(10), "big")  # 80 bits, of which 74 are used
    return UUID(
        int=(milliseconds & _MILLISECONDS) << 80
        | 0x7 << 76  # version
        | (random >> 62 & 0xFFF) << 64  # rand_a
        | 0b10 << 62  # variant
        | random & _LOW_62  # rand_b
    )
