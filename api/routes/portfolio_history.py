"""GET /v1/portfolio/history: the account's equity over time, shaped like Alpaca's."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from api.auth import CurrentPrincipal
from api.deps import ClockDep, DbDep
from api.errors import ERROR_RESPONSES, invalid
from api.models import FIRST_DAY, LAST_DAY, Money
from infra import portfolio_history as ph
from schemas.eod import (
    INTRADAY_PERIODS,
    PERIODS,
    TIMEFRAMES,
    default_timeframe,
    ny_date,
    period_first_day,
    trading_days,
)
from schemas.sessions import is_trading_day, previous_session

router = APIRouter(tags=["portfolio"], responses=ERROR_RESPONSES)


class HistoryOut(BaseModel):
    """Parallel arrays, one entry per point; money as decimal strings, profit_loss_pct a
    fraction (0.0123 is 1.23 %) of the base value plus the deposits since."""

    timestamp: list[int]
    equity: list[Money]
    profit_loss: list[Money]
    profit_loss_pct: list[Money]
    base_value: Money
    base_value_asof: date | None
    timeframe: str


@router.get("/v1/portfolio/history", response_model=HistoryOut, summary="The portfolio's history")
def get_history(
    request: Request,
    principal: CurrentPrincipal,
    db: DbDep,
    clock: ClockDep,
    period: Annotated[str, Query(description="1D, 1W, 1M, 3M, 1A or all")] = "1M",
    timeframe: Annotated[
        str | None,
        Query(description="1Min, 5Min, 15Min, 1H or 1D (default: 1Min for 1D, 1H for 1W, else 1D)"),
    ] = None,
    date_end: Annotated[
        date | None,
        Query(description="Last day (New York; default: today)", ge=FIRST_DAY, le=LAST_DAY),
    ] = None,
    extended_hours: Annotated[
        bool, Query(description="Intraday bars from 04:00 to 20:00 New York")
    ] = False,
) -> HistoryOut:
    """Equity, profit/loss since the base value and its fraction, per point. Timeframe 1D
    answers from the end-of-day snapshots (one point per closed day); intraday timeframes
    value the account at each bar from the 1-minute candles and its fills, for periods
    up to 1M. 422 `invalid_period`, `invalid_timeframe`."""
    if period not in PERIODS:
        raise invalid("invalid_period", f"period is one of {', '.join(PERIODS)}; got {period!r}")
    timeframe = timeframe or default_timeframe(period)
    if timeframe not in TIMEFRAMES:
        raise invalid(
            "invalid_timeframe", f"timeframe is one of {', '.join(TIMEFRAMES)}; got {timeframe!r}"
        )
    if timeframe != "1D" and period not in INTRADAY_PERIODS:
        raise invalid(
            "invalid_timeframe",
            f"intraday timeframes are for periods up to 1M; use 1D for {period}",
        )
    now = clock()
    last = date_end or ny_date(now)
    ch = request.app.state.candles.ch
    if timeframe == "1D":
        h = ph.daily(ch, principal.account_id, period_first_day(period, last), last)
    else:
        if not is_trading_day(last):
            last = previous_session(last)
        if not ph.bars([last], TIMEFRAMES[timeframe], extended_hours, now):
            last = previous_session(last)  # before today's first bar: the day before
        first = period_first_day(period, last)
        assert first is not None
        h = ph.intraday(
            db,
            ch,
            principal.account_id,
            trading_days(first, last),
            TIMEFRAMES[timeframe],
            extended=extended_hours,
            clock_now=now,
        )
    return HistoryOut(
        timestamp=h.timestamp,
        equity=h.equity,
        profit_loss=h.profit_loss,
        profit_loss_pct=h.profit_loss_pct,
        base_value=h.base_value,
        base_value_asof=h.base_value_asof,
        timeframe=timeframe,
    )
