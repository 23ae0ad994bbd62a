"""The arithmetic behind the benchmarks' RegisterPerson-over-echo figures, and the tuning
bench's reading of its settings: a slip here would misreport every run."""

from __future__ import annotations

import argparse

import pytest

from bench.identity import Alternation, Load
from bench.identity_tuning import Setting, ms_list


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


def test_an_alternation_refuses_rounds_that_do_not_pair_up():
    with pytest.raises(ValueError):
        Alternation.of([load(2000), load(3000)], [load(800)])


def test_settings_are_read_as_milliseconds_and_named_by_them():
    assert ms_list("4, 5.5,6") == [4.0, 5.5, 6.0]
    assert Setting(5.0, 50.0).name == "window_5ms_notify_50ms"
    assert Setting(5.5, 0.0).name == "window_5.5ms_notify_0ms"


@pytest.mark.parametrize("text", ["", "4,x", "-1", ","])
def test_settings_that_are_not_milliseconds_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        ms_list(text)
