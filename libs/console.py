"""What operators' command-line tools print: plain-text tables, and progress on standard
error for long operations."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell, a rule under the headers; numbers right-aligned.
    A cell's line breaks become spaces, so each row stays one line."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [
        max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)
    ]
    numeric = [
        bool(rows) and all(isinstance(row[i], int | float) for row in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join(
        [line(list(headers)), line(["-" * width for width in widths]), *map(line, cells)]
    )


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return " ".join(str(value).split())


class Progress:
    """Reports `done` of `total` on standard error: rewritten in place on a terminal,
    otherwise a line at most every `interval` seconds, and always the last."""

    def __init__(self, label: str, *, stream: TextIO | None = None, interval: float = 2.0):
        self.label = label
        self.stream = stream or sys.stderr
        self.interval = interval
        self._last = float("-inf")  # the first report is printed at once
        self._started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        final = done >= total
        if not final and now - self._last < self.interval and not self._live:
            return
        self._last = now
        share = done / total * 100 if total else 100.0
        text = f"{self.label}: {done:,} of {total:,} ({share:.0f}%, {now - self._started:.1f} s)"
        if self._live:
            self.stream.write(f"\r{text}" + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    @property
    def _live(self) -> bool:
        return self.stream.isatty()
