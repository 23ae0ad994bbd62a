"""Operators' tables and progress."""

from __future__ import annotations

import io

from libs.console import Progress, table


def test_a_table_pads_columns_aligns_numbers_and_keeps_each_row_on_a_line():
    assert table(["name", "events", "note"], [["identity", 1234, None], ["x", 5, "a\nb"]]) == (
        "name      events  note\n--------  ------  ----\nidentity   1,234\nx              5  a b"
    )


def test_progress_off_a_terminal_prints_a_line_now_and_then_and_always_the_last():
    stream = io.StringIO()
    progress = Progress("events applied", stream=stream, interval=3600)
    for done in (1000, 2000, 3000):
        progress(done, 3000)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("events applied: 1,000 of 3,000 (33%")
    assert lines[1].startswith("events applied: 3,000 of 3,000 (100%")
