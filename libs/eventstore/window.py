"""Sizing the event store's write window to the machine it runs on.

The writer holds a group of appends for up to a window so that more join it: a group
costs the event loop and PostgreSQL much the same whatever its size, so fuller groups
cost less CPU per append. But every caller waits for its group, and a window held while
the event loop has nothing else to do only makes callers wait. Which window is best
depends on how fast the machine runs the rest of each call: measured with 16 callers
(`make bench-identity-tuning`), 5 ms was best on machines serving 1,000-1,800
commands/s, and 3-4 ms on one serving 2,400-2,700/s, where 5 ms left the loop idle a
fifth of the time.

`AdaptiveWindow` finds it while serving. Over each period in which groups are held, it
measures how much of the time the event loop's thread was busy: running, or ready to run
and waiting for a core (Linux's schedstat). A loop idle while groups are held is waiting
for the window: the window shrinks. A loop busy nearly all the time is short of CPU: the
window grows, so each append costs less, up to `most`. Between the two it stays. Where
schedstat cannot be read, the window stays as configured: CPU time alone would mistake a
loop waiting for a core for an idle one, and shrink the window just when CPU is short.

Busy alone does not say when to stop growing: a loop can count as busy while it waits
for a core, when every core is saturated, and past some window callers only wait longer.
So with a `fill`, the window grows only while the groups held averaged fewer appends than
that: past it a group's cost is already spread thinly, and a longer window would save
little. And it shrinks, however busy the loop, while groups average more than twice the
fill: a shorter window would still fill them, and callers wait less. (Without a fill,
allowed up to 8 ms on a machine whose cores were both saturated, the window climbed to
7 ms and served a tenth less than at 5 ms, where groups already averaged over 10. On a
machine running Python half as fast, groups at 5 ms held 3-4 commands, and at 12 ms
about 8, which served 11-29% more.)
"""

from __future__ import annotations

from collections.abc import Callable

SCHEDSTAT = "/proc/thread-self/schedstat"


def thread_busy_seconds() -> float | None:
    """Seconds the calling thread has spent on a CPU or waiting for one (Linux), or None
    where that cannot be read."""
    try:
        with open(SCHEDSTAT, "rb") as f:
            running, waiting, *_ = f.read().split()
        return (int(running) + int(waiting)) / 1e9
    except (OSError, ValueError):
        return None


class AdaptiveWindow:
    """Adjusts a write window between `least` and `most` seconds, once per `period` of
    held groups: by `step` times down when the event loop's thread was busy less than
    `busy_below` of the period, by `step` times up when it was busy more than
    `busy_above` and (with a `fill`) the period's groups averaged fewer than `fill`
    appends; and down, too, when they averaged more than twice `fill`. `busy_clock` must
    read the thread the writer runs on: the store calls `adjust` from its writer task."""

    def __init__(
        self,
        least: float,
        most: float,
        *,
        period: float = 0.05,
        busy_below: float = 0.85,
        busy_above: float = 0.9,
        step: float = 1.1,
        fill: float | None = None,
        busy_clock: Callable[[], float | None] = thread_busy_seconds,
    ) -> None:
        if not 0 < least <= most:
            raise ValueError(f"need 0 < least <= most, not {least} and {most}")
        if not 0 < busy_below <= busy_above <= 1 or step <= 1 or period <= 0:
            raise ValueError("need 0 < busy_below <= busy_above <= 1, step > 1, period > 0")
        if fill is not None and fill <= 1:
            raise ValueError(f"need fill > 1 append per group, not {fill}")
        self.least, self.most = least, most
        self.period = period
        self.busy_below, self.busy_above = busy_below, busy_above
        self.step = step
        self.fill = fill
        self._busy_clock = busy_clock
        self._readable = True  # until the clock first fails to read
        # (loop time, busy seconds, appends written) as the period started
        self._started: tuple[float, float, int] | None = None
        self._held = 0  # groups held since then
        self._last_call = 0.0
        self.shrunk = 0  # periods after which the window shrank
        self.grew = 0  # periods after which it grew

    def adjust(self, window: float, now: float, appends: int = 0) -> float:
        """The window for the group starting at loop time `now`, given the current one.
        Called as each held group starts, with `appends`, how many appends the store has
        written in groups so far (for `fill`); a gap of more than a period between calls
        (a quiet spell, or groups too small to hold) starts a fresh period."""
        window = min(max(window, self.least), self.most)
        if not self._readable:
            return window
        if self._started is None or now - self._last_call > self.period:
            self._last_call = now
            self._start(now, appends)
            return window
        self._last_call = now
        self._held += 1
        started_at, busy_before, appends_before = self._started
        elapsed = now - started_at
        if elapsed < self.period:
            return window
        held = self._held
        busy = self._start(now, appends)
        if busy is None:
            return window
        share = (busy - busy_before) / elapsed
        group = (appends - appends_before) / held  # appends per group, on average
        if share < self.busy_below or (self.fill is not None and group > 2 * self.fill):
            self.shrunk += 1
            return max(window / self.step, self.least)
        if share > self.busy_above and (self.fill is None or group < self.fill):
            self.grew += 1
            return min(window * self.step, self.most)
        return window

    def _start(self, now: float, appends: int) -> float | None:
        """Starts a period at `now` and returns the busy clock's reading: read once a
        period, not at every group. If it cannot be read, nothing is adjusted again."""
        busy = self._busy_clock()
        if busy is None:
            self._readable, self._started = False, None
        else:
            self._started = (now, busy, appends)
            self._held = 0
        return busy
