"""Positions and the portfolio, valued at the latest quotes in Redis.

Current price: the NBBO midpoint (positions without a two-sided quote are valued at
cost, `current_price` null). Previous close (`lastday_price`, today's change): the close
of the previous New York trading day's candle, when ClickHouse holds one (the full API;
`python -m api.trading` has no ClickHouse and answers null there).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from api.auth import CurrentPrincipal
from api.deps import ClockDep, DbDep, LedgerDep, QuotesDep, SymbolPath
from api.errors import ERROR_RESPONSES, ApiError, invalid, not_found
from api.models import Money, OrderOut
from infra.day_change import previous_closes
from infra.ledger import LedgerError, Replay
from infra.market_view import mids, symbol_view
from schemas.orders import (
    QTY_PLACES,
    OrderRefused,
    OrderRequest,
    OrderType,
    Side,
    TimeInForce,
    place,
)
from schemas.portfolio import PositionValue, value_portfolio, value_position

router = APIRouter(tags=["portfolio"], responses=ERROR_RESPONSES)
NEW_YORK = ZoneInfo("America/New_York")


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
    today = now.astimezone(NEW_YORK).date()
    closes = previous_closes(candles, symbols, today) if candles and symbols else {}
    return [
        value_position(s, qty, reserved, cost, prices.get(s), closes.get(s))
        for s, qty, reserved, cost in rows
    ]


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


@router.delete("/v1/positions/{symbol}", response_model=OrderOut, summary="Close a position")
def close_position(
    symbol: SymbolPath,
    principal: CurrentPrincipal,
    db: DbDep,
    ledger: LedgerDep,
    quotes: QuotesDep,
    clock: ClockDep,
    qty: Annotated[Decimal | None, Query(gt=0, description="Shares to sell")] = None,
    percentage: Annotated[
        Decimal | None, Query(gt=0, le=100, description="Percent of the position to sell")
    ] = None,
) -> OrderOut:
    """Sell the position (or `qty` shares, or `percentage` of it, rounded down to 6
    places) with a market day order; 200 with that order, as `POST /v1/orders` answers.
    Shares already reserved by open sell orders are not sold again: 403
    `insufficient_qty` when too few are free. 404 `position_not_found` without one."""
    from api.routes.orders import order_out

    if qty is not None and percentage is not None:
        raise invalid("qty_and_percentage", "give qty or percentage, not both")
    rows = _rows(db, principal.account_id, symbol)
    if not rows:
        raise not_found("position_not_found", f"no open position in {symbol}")
    _, held, reserved, _ = rows[0]
    if qty is None:
        share = held * percentage / 100 if percentage is not None else held - reserved
        qty = share.quantize(QTY_PLACES, ROUND_FLOOR)
    if qty <= 0:
        raise ApiError(403, "insufficient_qty", f"no free shares of {symbol} to sell")
    request = OrderRequest(symbol, Side.SELL, OrderType.MARKET, TimeInForce.DAY, qty=qty)
    view = symbol_view(quotes.redis, symbol, clock())
    try:
        order = ledger.place(principal.account_id, request, place(request, view.market))
    except (OrderRefused, LedgerError) as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    assert not isinstance(order, Replay)
    return order_out(order)
