"""Trading days and the market clock (schemas/sessions.py), pure: no services.

Facts checked here come from the NYSE's published 2026 schedule, not from the library:
Thanksgiving Thursday 2026-11-26 is a holiday, Friday 2026-11-27 closes at 13:00, and
New York is UTC-5 in November (UTC-4 in July).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from schemas.sessions import (
    OutsideCalendar,
    calendar_range,
    clock_state,
    market_session,
    next_trading_day,
    trading_day,
    trading_days,
)

NY = ZoneInfo("America/New_York")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ny(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=NY)


TUE, WED, THANKSGIVING, HALF_DAY, SAT, MON = (
    date(2026, 11, 24),
    date(2026, 11, 25),
    date(2026, 11, 26),
    date(2026, 11, 27),
    date(2026, 11, 28),
    date(2026, 11, 30),
)


def test_the_thanksgiving_week_has_its_holiday_and_its_half_day():
    days = trading_days(date(2026, 11, 23), date(2026, 11, 30))
    assert [d.date for d in days] == [date(2026, 11, 23), TUE, WED, HALF_DAY, MON]
    half = days[3]
    assert half.early_close and not any(d.early_close for d in days if d is not half)
    assert half.open == utc("2026-11-27T14:30:00") and half.close == utc("2026-11-27T18:00:00")
    assert half.session_open == utc("2026-11-27T09:00:00")  # 04:00 New York
    assert half.session_close == utc("2026-11-27T22:00:00")  # 17:00 New York: close + 4 h
    assert days[1].close == utc("2026-11-24T21:00:00")


def test_summer_days_are_four_hours_behind_utc():
    (day,) = trading_days(date(2026, 7, 1), date(2026, 7, 1))
    assert day.open == utc("2026-07-01T13:30:00") and day.close == utc("2026-07-01T20:00:00")
    assert day.session_open == utc("2026-07-01T08:00:00")


def test_a_range_without_trading_days_is_empty_and_a_reversed_one_too():
    assert trading_days(THANKSGIVING, THANKSGIVING) == []
    assert trading_days(SAT, date(2026, 11, 29)) == []
    assert trading_days(MON, TUE) == []


def test_dates_outside_the_calendar_are_refused_not_invented():
    first, last = calendar_range()
    assert trading_days(first, first)  # the edges themselves are fine
    with pytest.raises(OutsideCalendar):
        trading_days(first - timedelta(days=1), first + timedelta(days=10))
    with pytest.raises(OutsideCalendar):
        trading_days(last - timedelta(days=10), last + timedelta(days=1))


def test_single_days_and_the_next_trading_day():
    assert trading_day(THANKSGIVING) is None and trading_day(SAT) is None
    assert trading_day(HALF_DAY) == trading_days(HALF_DAY, HALF_DAY)[0]
    assert next_trading_day(WED) == HALF_DAY
    assert next_trading_day(HALF_DAY) == MON
    assert next_trading_day(date(2026, 12, 31)) == date(2027, 1, 4)  # New Year's Day, weekend


@pytest.mark.parametrize(
    ("now", "session", "next_open", "next_close", "day"),
    [
        # Tuesday: before pre-market, pre-market, open (inclusive), regular, close, post, night
        (ny(TUE, 3, 59), "closed", ny(TUE, 9, 30), ny(TUE, 16), TUE),
        (ny(TUE, 4), "pre", ny(TUE, 9, 30), ny(TUE, 16), TUE),
        (ny(TUE, 9, 30), "regular", ny(WED, 9, 30), ny(TUE, 16), TUE),
        (ny(TUE, 12), "regular", ny(WED, 9, 30), ny(TUE, 16), TUE),
        (ny(TUE, 16), "post", ny(WED, 9, 30), ny(WED, 16), TUE),
        (ny(TUE, 19, 59), "post", ny(WED, 9, 30), ny(WED, 16), TUE),
        (ny(TUE, 20), "closed", ny(WED, 9, 30), ny(WED, 16), WED),
        # Wednesday evening: the next day is the half day, past the holiday
        (ny(WED, 21), "closed", ny(HALF_DAY, 9, 30), ny(HALF_DAY, 13), HALF_DAY),
        (ny(THANKSGIVING, 12), "closed", ny(HALF_DAY, 9, 30), ny(HALF_DAY, 13), HALF_DAY),
        # The half day: regular until 13:00, then after-hours until 17:00
        (ny(HALF_DAY, 12, 59), "regular", ny(MON, 9, 30), ny(HALF_DAY, 13), HALF_DAY),
        (ny(HALF_DAY, 13), "post", ny(MON, 9, 30), ny(MON, 16), HALF_DAY),
        (ny(HALF_DAY, 16, 59), "post", ny(MON, 9, 30), ny(MON, 16), HALF_DAY),
        (ny(HALF_DAY, 17), "closed", ny(MON, 9, 30), ny(MON, 16), MON),
        (ny(HALF_DAY, 20, 30), "closed", ny(MON, 9, 30), ny(MON, 16), MON),
        # The weekend
        (ny(SAT, 12), "closed", ny(MON, 9, 30), ny(MON, 16), MON),
    ],
)
def test_the_clock_at_fixed_times(now, session, next_open, next_close, day):
    state = clock_state(now)
    assert state.session == session == market_session(now).kind
    assert state.is_open == (session == "regular")
    assert state.next_open == next_open and state.next_close == next_close
    assert state.next_open > now and state.next_close > now
    assert state.day.date == day


def test_the_clock_needs_an_aware_time():
    with pytest.raises(ValueError):
        clock_state(datetime(2026, 11, 24, 12, 0))
