"""New York trading days and the day change of a price. Pure: no I/O.

Trading days follow the NYSE calendar (exchange_calendars' XNYS: weekends and
exchange holidays are not sessions). Outside the calendar's range (it covers about
twenty years back and one ahead) every weekday counts as a session.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cache
from typing import Any

PERCENT_PLACES = Decimal("0.0001")


@cache
def _nyse() -> Any:
    import exchange_calendars  # ~0.4 s to import: only when a day change is first asked for

    # Building the calendar trips a pandas deprecation inside exchange_calendars 4.13;
    # nothing here can act on it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return exchange_calendars.get_calendar("XNYS")


def previous_session(day: date) -> date:
    """The last New York trading day strictly before `day`."""
    import pandas as pd

    cal = _nyse()
    before = day - timedelta(days=1)
    if cal.first_session.date() <= before <= cal.last_session.date():
        return cal.date_to_session(pd.Timestamp(before), direction="previous").date()
    while before.weekday() >= 5:
        before -= timedelta(days=1)
    return before


@dataclass(frozen=True, slots=True)
class DayChange:
    """The latest trade price against the previous trading day's close.

    Any field is None when it is unknown: no trade on record, or no candle for the
    previous trading day (then change and change_percent are None too).
    """

    last_price: Decimal | None
    previous_close: Decimal | None
    change: Decimal | None
    change_percent: Decimal | None


UNKNOWN = DayChange(None, None, None, None)


def day_change(last_price: Decimal | None, previous_close: Decimal | None) -> DayChange:
    if last_price is None or previous_close is None or previous_close <= 0:
        return DayChange(last_price, previous_close, None, None)
    change = last_price - previous_close
    percent = (change * 100 / previous_close).quantize(PERCENT_PLACES, ROUND_HALF_EVEN)
    return DayChange(last_price, previous_close, change, percent)
