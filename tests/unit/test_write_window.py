"""The adaptive write window: shrinks while the event loop idles with groups held or its
groups are twice their fill, grows while the loop is short of CPU and its groups are
short of their fill, stays between, and never leaves its bounds."""

from __future__ import annotations

import sys

import pytest

from libs.eventstore.window import AdaptiveWindow, thread_busy_seconds


class Busy:
    """A busy clock the test moves: seconds the loop's thread was busy; and the appends
    the store has written in groups so far."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.reads = 0
        self.appends = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.seconds


def window(busy, **options) -> AdaptiveWindow:
    return AdaptiveWindow(0.001, 0.008, period=0.05, step=1.25, busy_clock=busy, **options)


def begun(value: float = 0.005) -> tuple[Busy, AdaptiveWindow]:
    """A busy clock and a window whose first period started at loop time 0."""
    busy = Busy()
    adaptive = window(busy)
    assert adaptive.adjust(value, 0.0) == value  # the first call starts a period
    return busy, adaptive


def run_period(
    adaptive: AdaptiveWindow,
    busy: Busy,
    value: float,
    start: float,
    share: float,
    group: int = 2,
):
    """Groups of `group` appends held every 5 ms for a little over one period, the loop
    busy `share` of the time: the window after it, and the loop time it ended at."""
    now = start
    for _ in range(11):
        now += 0.005
        busy.seconds += 0.005 * share
        busy.appends += group
        value = adaptive.adjust(value, now, busy.appends)
    return value, now


def test_an_idle_loop_shrinks_the_window_and_a_busy_one_grows_it():
    busy, adaptive = begun()
    idle, now = run_period(adaptive, busy, 0.005, 0.0, share=0.6)
    assert idle == pytest.approx(0.005 / 1.25)
    assert (adaptive.shrunk, adaptive.grew) == (1, 0)
    busier, now = run_period(adaptive, busy, idle, now, share=0.97)
    assert busier == pytest.approx(0.005)
    assert (adaptive.shrunk, adaptive.grew) == (1, 1)


def test_between_the_two_thresholds_the_window_stays():
    busy, adaptive = begun(0.004)
    value, _ = run_period(adaptive, busy, 0.004, 0.0, share=0.87)
    assert value == 0.004
    assert (adaptive.shrunk, adaptive.grew) == (0, 0)


def test_a_busy_loop_grows_the_window_only_while_its_groups_are_short_of_their_fill():
    busy = Busy()
    adaptive = window(busy, fill=8)
    assert adaptive.adjust(0.005, 0.0, busy.appends) == 0.005
    # Groups of 3 on a loop short of CPU: a longer window gathers more into each.
    value, now = run_period(adaptive, busy, 0.005, 0.0, share=0.97, group=3)
    assert value == pytest.approx(0.005 * 1.25)
    # Groups of 8 or more already spread a group's cost thinly: a longer window would
    # only make callers wait, however busy the loop (it may be waiting for a core).
    for group in (8, 12):
        value, now = run_period(adaptive, busy, value, now, share=1.0, group=group)
        assert value == pytest.approx(0.005 * 1.25)
    assert adaptive.grew == 1
    # The fill does not keep the window from shrinking when the loop idles.
    value, now = run_period(adaptive, busy, value, now, share=0.5, group=12)
    assert value == pytest.approx(0.005)
    assert adaptive.shrunk == 1


def test_groups_over_twice_the_fill_shrink_the_window_however_busy_the_loop():
    # Grown while the machine was slow, then the machine sped up: a loop waiting for a
    # core still counts as busy, but groups of 17 show a shorter window would fill them.
    busy = Busy()
    adaptive = window(busy, fill=8)
    assert adaptive.adjust(0.008, 0.0, busy.appends) == 0.008
    value, now = run_period(adaptive, busy, 0.008, 0.0, share=1.0, group=17)
    assert value == pytest.approx(0.008 / 1.25)
    # Up to twice the fill, it stays.
    value, now = run_period(adaptive, busy, value, now, share=1.0, group=16)
    assert value == pytest.approx(0.008 / 1.25)
    assert (adaptive.shrunk, adaptive.grew) == (1, 0)


def test_the_window_is_changed_once_a_period_not_at_every_group():
    busy, adaptive = begun()
    busy.seconds += 0.01
    # 20 ms in, with the loop idle half of it: too soon to judge.
    assert adaptive.adjust(0.005, 0.02) == 0.005
    assert adaptive.shrunk == 0
    # The clock (a file read) is read as a period starts and ends, not at every group.
    run_period(adaptive, busy, 0.005, 0.02, share=0.5)
    assert busy.reads == 2


def test_the_window_never_leaves_its_bounds():
    busy, adaptive = begun()
    value, now = 0.005, 0.0
    for _ in range(20):
        value, now = run_period(adaptive, busy, value, now, share=0.1)
    assert value == pytest.approx(0.001)
    for _ in range(40):
        value, now = run_period(adaptive, busy, value, now, share=1.0)
    assert value == pytest.approx(0.008)
    # A window set outside the bounds is brought inside them.
    assert adaptive.adjust(0.05, now + 0.001) == 0.008


def test_a_quiet_spell_starts_a_fresh_period_rather_than_counting_as_idle():
    busy, adaptive = begun()
    # Nothing held for a second (no load, or lone appends): the loop was idle, but not
    # because of the window, which must not shrink for it.
    busy.seconds += 0.01
    assert adaptive.adjust(0.005, 1.0) == 0.005
    value, _ = run_period(adaptive, busy, 0.005, 1.0, share=0.95)
    assert value == pytest.approx(0.005 * 1.25)
    assert adaptive.shrunk == 0


def test_without_a_busy_clock_the_window_stays_as_configured_and_it_is_not_read_again():
    reads = []
    adaptive = window(lambda: reads.append(1))  # a clock that cannot be read: None
    for n in range(100):
        assert adaptive.adjust(0.005, n * 0.005) == 0.005
    assert len(reads) == 1


@pytest.mark.parametrize(
    "least, most, options",
    [
        (0.0, 0.008, {}),
        (0.009, 0.008, {}),
        (0.001, 0.008, {"busy_below": 0.95, "busy_above": 0.9}),
        (0.001, 0.008, {"step": 1.0}),
        (0.001, 0.008, {"period": 0.0}),
        (0.001, 0.008, {"fill": 1}),
    ],
)
def test_settings_that_cannot_work_are_refused(least, most, options):
    with pytest.raises(ValueError):
        AdaptiveWindow(least, most, **options)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's schedstat")
def test_the_busy_clock_reads_this_threads_time_on_a_cpu_on_linux():
    before = thread_busy_seconds()
    assert before is not None
    total = 0
    for n in range(200_000):
        total += n
    after = thread_busy_seconds()
    assert after > before
