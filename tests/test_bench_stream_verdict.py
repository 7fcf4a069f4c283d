"""bench.stream judges a target on the median run's p99, and says how the runs spread."""

from __future__ import annotations

from bench.stream import verdict


def test_one_run_is_judged_on_its_own_p99():
    assert verdict([99.9], 100.0) == ("PASS", "measured 99.9 ms (one run)")
    assert verdict([100.0], 100.0) == ("MISS", "measured 100.0 ms (one run)")


def test_several_runs_are_judged_on_the_median_not_the_best():
    mark, text = verdict([110.3, 407.3, 238.0, 90.0, 95.0], 100.0)
    assert mark == "MISS"
    assert text == "median 110.3 ms over 5 runs [90.0 .. 407.3], 2 of 5 under"
    assert verdict([90.0, 95.0, 407.3], 100.0)[0] == "PASS", "one bad run of three"
    assert verdict([90.0, 120.0], 100.0)[0] == "MISS", "even count: the mean of the middle two"
