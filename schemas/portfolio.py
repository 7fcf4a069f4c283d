"""What positions are worth at a price. Pure: no I/O.

A position is valued at its current price (the caller's choice: the NBBO midpoint) and,
without one, at cost. Today's change compares the current price with the previous
session's close (`lastday_price`); unknown when there is no close on record. Money to 4
places, ratios as fractions to 6 places (0.0123 is 1.23 %), rounded half-even, like
Alpaca's position object.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from schemas.orders import CASH_PLACES, PRICE_PLACES

RATIO_PLACES = Decimal("0.000001")
ZERO = Decimal(0)


def _money(v: Decimal) -> Decimal:
    return v.quantize(CASH_PLACES, ROUND_HALF_EVEN)


def _ratio(num: Decimal, den: Decimal) -> Decimal | None:
    if not den:
        return None
    # + 0 turns a negative zero (a tiny loss rounded away) into "0.000000"
    return (num / den).quantize(RATIO_PLACES, ROUND_HALF_EVEN) + 0


@dataclass(frozen=True, slots=True)
class PositionValue:
    symbol: str
    qty: Decimal
    qty_available: Decimal  # not reserved by open sell orders
    avg_entry_price: Decimal
    cost_basis: Decimal
    current_price: Decimal | None
    lastday_price: Decimal | None
    market_value: Decimal
    unrealized_pl: Decimal
    unrealized_plpc: Decimal | None
    unrealized_intraday_pl: Decimal | None
    unrealized_intraday_plpc: Decimal | None
    change_today: Decimal | None


def value_position(
    symbol: str,
    qty: Decimal,
    reserved_qty: Decimal,
    cost_basis: Decimal,
    price: Decimal | None,
    lastday: Decimal | None,
) -> PositionValue:
    avg = (cost_basis / qty).quantize(PRICE_PLACES, ROUND_HALF_EVEN) if qty else ZERO
    market_value = _money(qty * price) if price is not None else _money(cost_basis)
    unrealized = market_value - _money(cost_basis)
    intraday = intraday_pc = change = None
    if price is not None and lastday:
        intraday = _money(qty * (price - lastday))
        intraday_pc = _ratio(price - lastday, lastday)
        change = intraday_pc
    return PositionValue(
        symbol=symbol,
        qty=qty,
        qty_available=qty - reserved_qty,
        avg_entry_price=avg,
        cost_basis=_money(cost_basis),
        current_price=price,
        lastday_price=lastday,
        market_value=market_value,
        unrealized_pl=unrealized,
        unrealized_plpc=_ratio(unrealized, _money(cost_basis)),
        unrealized_intraday_pl=intraday,
        unrealized_intraday_plpc=intraday_pc,
        change_today=change,
    )


@dataclass(frozen=True, slots=True)
class PortfolioValue:
    cash: Decimal
    reserved_cash: Decimal
    buying_power: Decimal
    long_market_value: Decimal
    cost_basis: Decimal
    unrealized_pl: Decimal
    equity: Decimal
    day_change: Decimal  # over the positions whose previous close is known
    day_change_percent: Decimal | None  # of the equity at the previous close, as a fraction
    positions: int


def value_portfolio(
    cash: Decimal, reserved_cash: Decimal, positions: list[PositionValue]
) -> PortfolioValue:
    lmv = sum((p.market_value for p in positions), ZERO)
    cost = sum((p.cost_basis for p in positions), ZERO)
    day = sum((p.unrealized_intraday_pl or ZERO for p in positions), ZERO)
    equity = _money(cash + lmv)
    return PortfolioValue(
        cash=_money(cash),
        reserved_cash=_money(reserved_cash),
        buying_power=_money(cash - reserved_cash),
        long_market_value=_money(lmv),
        cost_basis=_money(cost),
        unrealized_pl=_money(lmv - cost),
        equity=equity,
        day_change=_money(day),
        day_change_percent=_ratio(day, equity - day),
        positions=len(positions),
    )
