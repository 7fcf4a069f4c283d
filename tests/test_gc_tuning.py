"""The stream edge's collector settings (infra/gc_tuning.py)."""

from __future__ import annotations

import gc

from infra.gc_tuning import THRESHOLDS, tune_for_server


def test_tune_for_server_freezes_startup_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        # As a fresh process starts (a stream test may have tuned this one already).
        gc.unfreeze()
        gc.set_threshold(700, 10, 10)
        tune_for_server()
        assert gc.get_threshold() == THRESHOLDS
        assert gc.get_freeze_count() > 0  # what existed is out of every later scan
        frozen = gc.get_freeze_count()
        since = [[] for _ in range(10)]  # would be frozen by a second freeze
        tune_for_server()  # a second hub in the process: nothing done again
        assert gc.get_freeze_count() == frozen
        del since
        # Allocations well past the default young threshold (700) do not trigger a
        # collection any more.
        gc.collect()
        collections = sum(s["collections"] for s in gc.get_stats())
        kept = [[i] for i in range(5_000)]
        assert sum(s["collections"] for s in gc.get_stats()) == collections
        del kept
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
