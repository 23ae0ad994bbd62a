"""The arithmetic behind the benchmarks' RegisterPerson-over-echo figures, their reading of
the machine's Python speed, and the tuning bench's reading of its settings: a slip here
would misreport every run."""

from __future__ import annotations

import argparse

import pytest

from bench.identity import Alternation, Load, per_call_ms, python_loop_ns
from bench.identity_tuning import Setting, ms_list, windows_list


def load(rate: float, server_cpu_ms: float = 1.0) -> Load:
    return Load(rate, server_cpu_ms, 0.25, None)


def test_an_alternation_pairs_each_round_with_the_echo_run_just_before_it():
    alternation = Alternation.of(
        [load(2000), load(3000), load(2500)],
        [load(800), load(900), load(1300, server_cpu_ms=2.0)],
    )
    assert alternation.round_ratios == pytest.approx((0.4, 0.3, 0.52))
    assert (alternation.lowest, alternation.highest) == pytest.approx((0.3, 0.52))
    assert alternation.spread == "0.30-0.52"
    assert alternation.echo.rate == pytest.approx(2500)
    assert alternation.register.rate == pytest.approx(1000)
    assert alternation.register.server_cpu_ms == pytest.approx(4 / 3)
    # The headline figure is the ratio of the mean rates, not the mean of the ratios.
    assert alternation.ratio == pytest.approx(0.4)


def test_the_event_loop_share_is_its_cpu_per_call_times_the_rate():
    """0.3 ms of the loop thread per call at 2,500 calls/s: busy 75% of the time."""
    assert Load(2500, 0.4, 0.1, None, loop_cpu_ms=0.3).loop_busy == pytest.approx(0.75)
    both = Alternation.of(
        [load(7000), load(7000)],
        [Load(2000, 0.4, 0.1, 0.1, loop_cpu_ms=0.3), Load(2000, 0.4, 0.1, 0.1, 0.4)],
    )
    assert both.register.loop_cpu_ms == pytest.approx(0.35)
    assert both.register.loop_busy == pytest.approx(0.7)
    # Time waiting for a CPU is known only where every round could read it.
    assert both.register.loop_runnable is None
    waited = Load(2000, 0.4, 0.1, None, loop_cpu_ms=0.3, loop_runnable_ms=0.05)
    assert waited.loop_runnable == pytest.approx(0.1)
    assert Alternation.of([load(7000)], [waited]).register.loop_runnable == pytest.approx(0.1)


def test_an_alternation_refuses_rounds_that_do_not_pair_up():
    with pytest.raises(ValueError):
        Alternation.of([load(2000), load(3000)], [load(800)])


def test_settings_are_read_as_milliseconds_and_named_by_them():
    assert ms_list("4, 5.5,6") == [4.0, 5.5, 6.0]
    assert Setting(5.0, 50.0).name == "window_5ms_notify_50ms"
    assert Setting(5.5, 0.0).name == "window_5.5ms_notify_0ms"
    assert Setting(None, 50.0).name == "window_auto_notify_50ms"
    assert windows_list("3, auto,5") == [3.0, 5.0, None]
    assert windows_list("auto") == [None]


@pytest.mark.parametrize("text", ["", "4,x", "-1", ","])
def test_settings_that_are_not_milliseconds_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        ms_list(text)
    with pytest.raises(argparse.ArgumentTypeError):
        windows_list(text)


def test_a_reading_per_call_is_the_difference_over_the_calls_or_none_if_either_is_missing():
    """PostgreSQL's CPU and the loop's wait for a CPU are read before and after a run;
    either reading is missing where PostgreSQL is remote or Linux's schedstat absent."""
    assert per_call_ms(10.0, 12.5, 5000) == pytest.approx(0.5)
    assert per_call_ms(None, 12.5, 5000) is None
    assert per_call_ms(10.0, None, 5000) is None


def test_the_machine_speed_reading_is_the_fastest_repeat_per_addition():
    """Three repeats of 10 additions take 2 s, 1 s and 3 s: the fastest gives 1e8 ns each."""
    readings = iter([0.0, 2.0, 10.0, 11.0, 20.0, 23.0])
    assert python_loop_ns(10, 3, timer=lambda: next(readings)) == pytest.approx(1e8)
    assert 0 < python_loop_ns(1000, 1) < 1e6
