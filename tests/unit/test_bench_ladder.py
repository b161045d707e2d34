"""The rate ladder's steps: the listed rates, then on past them while every step is bounded."""

from __future__ import annotations

import itertools

from bench import run


def test_ladder_goes_on_past_the_listed_rates_up_to_its_cap() -> None:
    assert list(run.ladder([2000, 4000], 3000, 12_000)) == [2000, 4000, 7000, 10_000]
    assert list(run.ladder([2000, 4000], 4000, 12_000)) == [2000, 4000, 8000, 12_000]


def test_ladder_without_steps_beyond_is_the_list() -> None:
    assert list(run.ladder([1000, 2000, 5000], 0, 60_000)) == [1000, 2000, 5000]
    assert list(run.ladder([], 4000, 60_000)) == []


def test_full_run_looks_past_its_list_and_a_quick_one_does_not() -> None:
    full = list(run.ladder(run.FULL["rates"], run.FULL["ladder_beyond"], run.FULL["ladder_cap"]))
    assert full[: len(run.FULL["rates"])] == run.FULL["rates"]
    assert full[-1] == run.FULL["ladder_cap"] > run.FULL["rates"][-1]
    assert all(b > a for a, b in itertools.pairwise(full))
    quick = list(run.ladder(run.QUICK["rates"], run.QUICK["ladder_beyond"], run.QUICK["ladder_cap"]))
    assert quick == run.QUICK["rates"]
