"""The market clock and the exchange calendar, shaped like Alpaca's /v2/clock and /v2/calendar.

Both answer by the API's market clock (`app.state.clock`, infra/market_view.py): the wall,
or during a replay the feed's own time (TAPEFLOW_CLOCK=feed), so a replayed day reads as
that day. Trading days are the NYSE's (schemas/sessions.py, exchange_calendars XNYS).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.deps import ClockDep
from api.errors import ERROR_RESPONSES, invalid
from infra.market_view import EPOCH, ClockSource, clock_reading
from schemas.json_feed import format_time
from schemas.sessions import (
    NEW_YORK,
    OutsideCalendar,
    SessionKind,
    TradingDay,
    calendar_range,
    clock_state,
    trading_days,
)

router = APIRouter(tags=["clock"], responses=ERROR_RESPONSES)
NY = ZoneInfo(NEW_YORK)
# At most this many calendar days per request (a leap year, both ends included).
MAX_CALENDAR_DAYS = 366
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def rfc3339(t: datetime) -> str:
    """UTC with nine fractional digits, like the quotes' as_of."""
    return format_time((t - EPOCH) // timedelta(microseconds=1) * 1_000)


class CalendarDayOut(BaseModel):
    """One trading day. open / close / session_open / session_close are New York local
    times ("HH:MM", as Alpaca gives them); the *_utc fields are the same instants in UTC."""

    date: str = Field(examples=["2026-11-27"])
    open: str = Field(examples=["09:30"], description="Regular session open, New York")
    close: str = Field(examples=["13:00"], description="Regular session close, New York")
    session_open: str = Field(examples=["04:00"], description="Pre-market start, New York")
    session_close: str = Field(examples=["20:00"], description="After-hours end, New York")
    open_utc: str
    close_utc: str
    session_open_utc: str
    session_close_utc: str
    early_close: bool = Field(description="The regular session closes before 16:00")


class ClockOut(BaseModel):
    timestamp: str = Field(description="The clock's time now (RFC 3339, UTC)")
    is_open: bool = Field(description="The regular session is on")
    next_open: str = Field(description="The next regular open after now (trading days only)")
    next_close: str = Field(description="The next regular close after now (trading days only)")
    session: SessionKind = Field(
        description="pre 04:00-open, regular open-close, post close-20:00 New York, else closed"
    )
    trading_day: CalendarDayOut = Field(
        description="The trading day now falls in (its 04:00 to 20:00 New York), else the next"
    )
    source: ClockSource = Field(
        description="wall: the wall clock (TAPEFLOW_CLOCK_START may shift it); feed: the "
        "newest event time of the market-data feed (TAPEFLOW_CLOCK=feed)"
    )


def _hhmm(t: datetime) -> str:
    return t.astimezone(NY).strftime("%H:%M")


def day_out(d: TradingDay) -> CalendarDayOut:
    return CalendarDayOut(
        date=d.date.isoformat(),
        open=_hhmm(d.open),
        close=_hhmm(d.close),
        session_open=_hhmm(d.session_open),
        session_close=_hhmm(d.session_close),
        open_utc=rfc3339(d.open),
        close_utc=rfc3339(d.close),
        session_open_utc=rfc3339(d.session_open),
        session_close_utc=rfc3339(d.session_close),
        early_close=d.early_close,
    )


@router.get("/v1/clock", response_model=ClockOut, summary="Is the market open, and when next")
def get_clock(clock: ClockDep) -> ClockOut:
    now, source = clock_reading(clock)
    state = clock_state(now)
    return ClockOut(
        timestamp=rfc3339(state.now),
        is_open=state.is_open,
        next_open=rfc3339(state.next_open),
        next_close=rfc3339(state.next_close),
        session=state.session,
        trading_day=day_out(state.day),
        source=source,
    )


def _date(name: str, raw: str | None) -> date | None:
    if raw is None:
        return None
    try:
        if not DATE_RE.match(raw):
            raise ValueError
        return date.fromisoformat(raw)
    except ValueError:
        raise invalid("invalid_date", f"{name}: {raw[:40]!r} is not a date (YYYY-MM-DD)") from None


def calendar_window(start: date | None, end: date | None, today: date) -> tuple[date, date]:
    """start / end as asked; a missing one is filled to make the longest window allowed
    (from today when both are missing), kept inside the calendar library's range."""
    span = timedelta(days=MAX_CALENDAR_DAYS - 1)
    first, last = calendar_range()
    if start is None and end is None:
        start = today
    if end is None:
        end = min(start + span, max(last, start))
    elif start is None:
        start = max(end - span, min(first, end))
    if start > end:
        raise invalid(
            "invalid_date_range", f"start {start.isoformat()} is after end {end.isoformat()}"
        )
    if (end - start).days + 1 > MAX_CALENDAR_DAYS:
        raise invalid(
            "date_range_too_long", f"start to end spans more than {MAX_CALENDAR_DAYS} days"
        )
    return start, end


@router.get(
    "/v1/calendar",
    response_model=list[CalendarDayOut],
    summary="Trading days with their hours (NYSE: holidays and half days)",
)
def get_calendar(
    clock: ClockDep,
    start: Annotated[
        str | None, Query(description="First date (YYYY-MM-DD, inclusive); default: today")
    ] = None,
    end: Annotated[
        str | None,
        Query(description=f"Last date (inclusive); default: start + {MAX_CALENDAR_DAYS - 1} days"),
    ] = None,
) -> list[CalendarDayOut]:
    """One entry per trading day from start to end, both inclusive, at most
    366 days; today is the market clock's New York date."""
    today = clock().astimezone(NY).date()
    first, last = calendar_window(_date("start", start), _date("end", end), today)
    try:
        days = trading_days(first, last)
    except OutsideCalendar as exc:
        raise invalid("outside_calendar", str(exc)) from None
    return [day_out(d) for d in days]
