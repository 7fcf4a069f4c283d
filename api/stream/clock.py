"""Is the market open? Stale markers are only sent while it is (XNYS regular session).

"feed" judges at the newest event time the process has seen, so a replay of a
recorded session behaves like that day (its stale markers appear when the replay
stops mid-session) and a live feed behaves like the wall clock; a feed that has
never been seen counts as closed. "wall" judges at the wall clock.
"""

from __future__ import annotations

import time
import warnings
from functools import cache
from typing import Any, Literal

Mode = Literal["feed", "wall", "always", "never"]
MINUTE_NS = 60_000_000_000


@cache
def _xnys() -> Any:
    import exchange_calendars

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return exchange_calendars.get_calendar("XNYS")


@cache
def _open_at_minute(minute: int) -> bool:
    import pandas as pd

    try:
        with warnings.catch_warnings():  # pandas deprecations inside exchange_calendars
            warnings.simplefilter("ignore")
            return bool(_xnys().is_open_on_minute(pd.Timestamp(minute * MINUTE_NS, tz="UTC")))
    except ValueError:  # outside the calendar's range (about 20 years back, 1 ahead)
        return False


def xnys_open(at_ns: int) -> bool:
    return _open_at_minute(at_ns // MINUTE_NS)


class MarketClock:
    def __init__(self, mode: Mode) -> None:
        self.mode = mode

    def warm_up(self) -> None:
        """Load the calendar (about 0.1 s) before the first check needs it."""
        if self.mode in ("feed", "wall"):
            _xnys()

    def is_open(self, feed_ns: int | None) -> bool:
        if self.mode == "always":
            return True
        if self.mode == "never":
            return False
        at = time.time_ns() if self.mode == "wall" else feed_ns
        return at is not None and xnys_open(at)
