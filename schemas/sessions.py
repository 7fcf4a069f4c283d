"""New York trading days, the market clock and the day change of a price. Pure: no I/O.

Trading days follow the NYSE calendar (exchange_calendars' XNYS: weekends and
exchange holidays are not sessions, half days close at 13:00). Outside the calendar's
range (it covers about twenty years back and one ahead) every weekday counts as a
session for the clock and for order placement; `trading_days` (GET /v1/calendar)
refuses such dates instead of inventing them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

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


NEW_YORK = "America/New_York"
PRE_OPEN = time(4, 0)
REGULAR_OPEN = time(9, 30)
REGULAR_CLOSE = time(16, 0)
POST_CLOSE = time(20, 0)
# After-hours runs four hours past the regular close: to 20:00, or 17:00 on a half day
# (NYSE Arca's late session on early-close days).
AFTER_HOURS = timedelta(hours=4)
SessionKind = Literal["pre", "regular", "post", "closed"]


@dataclass(frozen=True, slots=True)
class MarketSession:
    """Where `now` falls in New York's trading day.

    open and close are the regular session's bounds (UTC) on `now`'s New York date, None
    when that date is not a trading day; close is 13:00 on half days.
    """

    kind: SessionKind
    day: date  # New York date of `now`
    open: datetime | None
    close: datetime | None


def is_trading_day(day: date) -> bool:
    import pandas as pd

    cal = _nyse()
    if cal.first_session.date() <= day <= cal.last_session.date():
        return bool(cal.is_session(pd.Timestamp(day)))
    return day.weekday() < 5


@cache
def regular_hours(day: date) -> tuple[datetime, datetime] | None:
    """The regular session of a New York date, in UTC, or None on a non-trading day."""
    import pandas as pd

    if not is_trading_day(day):
        return None
    cal = _nyse()
    if cal.first_session.date() <= day <= cal.last_session.date():
        ts = pd.Timestamp(day)
        return (
            cal.session_open(ts).to_pydatetime().astimezone(UTC),
            cal.session_close(ts).to_pydatetime().astimezone(UTC),
        )
    ny = ZoneInfo(NEW_YORK)
    return (
        datetime.combine(day, REGULAR_OPEN, ny).astimezone(UTC),
        datetime.combine(day, REGULAR_CLOSE, ny).astimezone(UTC),
    )


def market_session(now: datetime) -> MarketSession:
    """pre 04:00–09:30, regular 09:30–close, post close–close + 4 h (20:00, 17:00 on a half
    day) New York, else closed."""
    if now.tzinfo is None:
        raise ValueError("market_session needs an aware datetime")
    ny = ZoneInfo(NEW_YORK)
    local = now.astimezone(ny)
    hours = regular_hours(local.date())
    if hours is None:
        return MarketSession("closed", local.date(), None, None)
    open_, close = hours
    pre = datetime.combine(local.date(), PRE_OPEN, ny)
    post = close + AFTER_HOURS
    if open_ <= now < close:
        kind: SessionKind = "regular"
    elif pre <= now < open_:
        kind = "pre"
    elif close <= now < post:
        kind = "post"
    else:
        kind = "closed"
    return MarketSession(kind, local.date(), open_, close)


# ---------------------------------------------------------------- trading days and the clock


class OutsideCalendar(ValueError):
    """A date the exchange calendar does not cover (its range moves with the machine's date)."""


@dataclass(frozen=True, slots=True)
class TradingDay:
    """One New York trading day's bounds, in UTC: pre-market from session_open to open,
    the regular session from open to close (13:00 New York on half days), after-hours
    from close to session_close (20:00 New York, half days too, as market_session has it)."""

    date: date
    session_open: datetime
    open: datetime
    close: datetime
    session_close: datetime

    @property
    def early_close(self) -> bool:
        return self.close.astimezone(ZoneInfo(NEW_YORK)).time() < REGULAR_CLOSE


def _extended(day: date, open_: datetime, close: datetime) -> TradingDay:
    ny = ZoneInfo(NEW_YORK)
    return TradingDay(
        day,
        datetime.combine(day, PRE_OPEN, ny).astimezone(UTC),
        open_,
        close,
        close + AFTER_HOURS,
    )


def trading_day(day: date) -> TradingDay | None:
    """The bounds of a New York date, None when it is not a trading day."""
    hours = regular_hours(day)
    return None if hours is None else _extended(day, *hours)


# Longer than any run of NYSE closures (weekends, holidays, the 2001 and 2012 closures).
_MAX_CLOSED_RUN = 14


def next_trading_day(day: date) -> date:
    """The first New York trading day strictly after `day`."""
    after = day + timedelta(days=1)
    for _ in range(_MAX_CLOSED_RUN):
        if is_trading_day(after):
            return after
        after += timedelta(days=1)
    raise ValueError(f"no trading day within {_MAX_CLOSED_RUN} days after {day}")


def calendar_range() -> tuple[date, date]:
    """The first and last sessions the exchange calendar knows."""
    cal = _nyse()
    return cal.first_session.date(), cal.last_session.date()


def trading_days(start: date, end: date) -> list[TradingDay]:
    """Every trading day from start to end (both inclusive), oldest first; OutsideCalendar
    when the range leaves the calendar's, rather than guessing days it does not know."""
    first, last = calendar_range()
    if start < first or end > last:
        raise OutsideCalendar(
            f"the exchange calendar covers {first.isoformat()} to {last.isoformat()}"
        )
    if start > end:
        return []
    # One slice of the schedule, not a lookup per day: a year is ~250 rows.
    rows = _nyse().schedule.loc[start.isoformat() : end.isoformat()]
    return [
        _extended(
            label.date(),
            open_.to_pydatetime().astimezone(UTC),
            close.to_pydatetime().astimezone(UTC),
        )
        for label, open_, close in zip(rows.index, rows["open"], rows["close"], strict=True)
    ]


@dataclass(frozen=True, slots=True)
class ClockState:
    """What GET /v1/clock says at `now`.

    is_open: the regular session is on. next_open / next_close: the first regular open /
    close strictly after now, on trading days only (weekends and holidays skipped).
    day: the trading day now falls in (from its 04:00 to its 20:00 New York), or else the
    next one, so its bounds always say when trading next starts and ends.
    """

    now: datetime
    session: SessionKind
    is_open: bool
    next_open: datetime
    next_close: datetime
    day: TradingDay


def clock_state(now: datetime) -> ClockState:
    session = market_session(now)  # checks now is aware
    today = trading_day(session.day)
    following = trading_day(next_trading_day(session.day))
    assert following is not None  # next_trading_day gives a trading day
    return ClockState(
        now=now,
        session=session.kind,
        is_open=session.kind == "regular",
        next_open=today.open if today and now < today.open else following.open,
        next_close=today.close if today and now < today.close else following.close,
        day=today if today and now < today.session_close else following,
    )
