"""Positions and the portfolio, valued at the latest quotes in Redis.

Current price: the NBBO midpoint (positions without a two-sided quote are valued at
cost, `current_price` null). Previous close (`lastday_price`, today's change): the close
of the previous New York trading day's candle, when ClickHouse holds one (the full API;
`python -m api.trading` has no ClickHouse and answers null there).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

from fastapi import APIRouter, Request
from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from api.auth import CurrentPrincipal
from api.deps import ClockDep, DbDep, LedgerDep, QuotesDep, SymbolPath
from api.errors import ERROR_RESPONSES, not_found
from api.models import Money
from infra.day_change import previous_closes
from infra.market_view import mids
from schemas.portfolio import PositionValue, value_portfolio, value_position

router = APIRouter(tags=["portfolio"], responses=ERROR_RESPONSES)
NEW_YORK = "America/New_York"


class PositionOut(BaseModel):
    """A position, shaped like Alpaca's position object. Decimals are strings; ratios are
    fractions (0.0123 is 1.23 %)."""

    symbol: str
    side: str = "long"
    qty: Money
    qty_available: Money
    avg_entry_price: Money
    cost_basis: Money
    current_price: Money | None
    lastday_price: Money | None
    market_value: Money
    unrealized_pl: Money
    unrealized_plpc: Money | None
    unrealized_intraday_pl: Money | None
    unrealized_intraday_plpc: Money | None
    change_today: Money | None


class PortfolioOut(BaseModel):
    equity: Money
    cash: Money
    reserved_cash: Money
    buying_power: Money
    long_market_value: Money
    cost_basis: Money
    unrealized_pl: Money
    day_change: Money
    day_change_percent: Money | None
    positions: int
    as_of: datetime


def _rows(db: ConnectionPool, account_id, symbol: str | None = None) -> list[tuple]:
    sql = (
        "SELECT symbol, qty, reserved_qty, cost_basis FROM positions "
        "WHERE account_id = %s AND qty > 0"
    )
    params: tuple = (account_id,)
    if symbol is not None:
        sql += " AND symbol = %s"
        params += (symbol,)
    with db.connection() as conn:
        return conn.execute(sql + " ORDER BY symbol", params).fetchall()


def _valued(request: Request, rows: list[tuple], quotes, now: datetime) -> list[PositionValue]:
    symbols = [r[0] for r in rows]
    prices = mids(quotes.redis, symbols)
    candles = getattr(request.app.state, "candles", None)
    today = now.astimezone(_ny()).date()
    closes = previous_closes(candles, symbols, today) if candles and symbols else {}
    return [
        value_position(s, qty, reserved, cost, prices.get(s), closes.get(s))
        for s, qty, reserved, cost in rows
    ]


def _ny():
    from zoneinfo import ZoneInfo

    return ZoneInfo(NEW_YORK)


def _out(v: PositionValue) -> PositionOut:
    return PositionOut(**asdict(v))


@router.get("/v1/positions", response_model=list[PositionOut], summary="Open positions")
def list_positions(
    request: Request, principal: CurrentPrincipal, db: DbDep, quotes: QuotesDep, clock: ClockDep
) -> list[PositionOut]:
    """Every open position of the account, by symbol."""
    rows = _rows(db, principal.account_id)
    return [_out(v) for v in _valued(request, rows, quotes, clock())]


@router.get("/v1/positions/{symbol}", response_model=PositionOut, summary="One position")
def get_position(
    request: Request,
    symbol: SymbolPath,
    principal: CurrentPrincipal,
    db: DbDep,
    quotes: QuotesDep,
    clock: ClockDep,
) -> PositionOut:
    """The account's position in `symbol`; 404 `position_not_found` when it holds none."""
    rows = _rows(db, principal.account_id, symbol)
    if not rows:
        raise not_found("position_not_found", f"no open position in {symbol}")
    return _out(_valued(request, rows, quotes, clock())[0])


@router.get("/v1/portfolio", response_model=PortfolioOut, summary="The portfolio's value")
def get_portfolio(
    request: Request,
    principal: CurrentPrincipal,
    db: DbDep,
    ledger: LedgerDep,
    quotes: QuotesDep,
    clock: ClockDep,
) -> PortfolioOut:
    """Equity (cash + long market value), cash, buying power, and the day's change of the
    positions whose previous close is known, as an amount and as a fraction of the
    equity at that close."""
    now = clock()
    balance = ledger.balance(principal.account_id)
    values = _valued(request, _rows(db, principal.account_id), quotes, now)
    p = value_portfolio(balance.cash, balance.reserved_cash, values)
    return PortfolioOut(**asdict(p), as_of=now)
