"""bench.fills reports the rate its load really offered (it once divided by the nominal
window, so a run whose sending stretched to 23 s read "1,000 fills/s" at ~440/s)."""

from __future__ import annotations

import math

import numpy as np

from bench.fills import Result, _per_s, latencies_ms


def _result(rate: int, acked_per_s: float) -> Result:
    return Result(rate, 10, 10, np.zeros(10), acked_per_s, acked_per_s, {})


def test_the_rate_is_counted_over_the_real_span() -> None:
    # 10,001 acknowledgements over 23 s, a window meant to be 10 s
    stamps = [int(i * 23e9 / 10_000) for i in range(10_001)]
    assert math.isclose(_per_s(stamps), 10_000 / 23, rel_tol=1e-9)
    assert math.isnan(_per_s([1]))


def test_a_run_that_did_not_hold_the_rate_does_not_count() -> None:
    assert not _result(1000, 440.0).held()
    assert _result(1000, 960.0).held()


def test_warmup_leaves_out_the_first_seconds_orders_only() -> None:
    s = 1_000_000_000
    acked = [
        ["a", str(10 * s), str(10 * s + 900_000_000), "200"],  # first ack: 900 ms
        ["b", str(11 * s), str(11 * s + 500_000_000), "200"],  # 1 s later: 500 ms
        ["c", str(12 * s), str(12 * s + 20_000_000), "200"],  # 2 s later: 20 ms
        ["d", str(13 * s), "0", "200"],  # never filled
    ]
    assert list(latencies_ms(acked)) == [20.0, 500.0, 900.0]
    assert list(latencies_ms(acked, 1.0)) == [20.0, 500.0]
    assert list(latencies_ms(acked, 1.5)) == [20.0]
    assert len(latencies_ms([], 2.0)) == 0
