"""What a fill does to an order, a position, its tax lots and cash. Pure: no I/O.

The ledger flow (infra/ledger.py) loads the rows, asks `apply_fill` what changes, checks
the answer against the invariants and writes it in one transaction. Rounding, so the
ledger never drifts:
- a fill's value is qty × price exactly (10 places); cash moves by that value rounded
  half-even to 4 places (CASH_PLACES);
- an order's reservation after a fill is what its unfilled rest needs
  (`schemas.orders.full_reservation` of the remaining quantity): the fill releases the
  difference. A buy never fills above its reserve price, so the released amount always
  covers the cash the fill spends;
- a position's cost basis is the exact sum of its open lots' qty × price; a sell closes
  lots first in, first out (FIFO), each closure with its proceeds, cost and gain.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from schemas.orders import CASH_PLACES, PRICE_PLACES, full_reservation

ZERO = Decimal(0)
LONG_TERM_AFTER = timedelta(days=365)


class FillRefused(Exception):
    """A fill the ledger must not apply (overfill, oversell, above the reserve price)."""


@dataclass(frozen=True, slots=True)
class OrderTerms:
    side: str
    qty: Decimal | None
    notional: Decimal | None
    reserve_price: Decimal | None
    filled_qty: Decimal
    filled_value: Decimal
    reserved_cash: Decimal
    reserved_qty: Decimal


@dataclass(frozen=True, slots=True)
class Lot:
    id: int
    opened_at: datetime
    remaining_qty: Decimal
    price: Decimal


@dataclass(frozen=True, slots=True)
class Closure:
    lot_id: int
    qty: Decimal
    proceeds: Decimal
    cost_basis: Decimal
    realized_pnl: Decimal
    long_term: bool


@dataclass(frozen=True, slots=True)
class FillEffect:
    filled_qty: Decimal  # the order's, after the fill
    filled_value: Decimal
    filled_avg_price: Decimal
    complete: bool  # nothing left to fill
    cash_delta: Decimal  # to the account's cash (negative for buys)
    release_cash: Decimal  # reservation given back (account and order)
    release_qty: Decimal  # shares' reservation given back (position and order)
    position_qty_delta: Decimal
    cost_basis_delta: Decimal
    closures: tuple[Closure, ...] = ()


def money(value: Decimal) -> Decimal:
    return value.quantize(CASH_PLACES, ROUND_HALF_EVEN)


def _remaining_reservation(
    o: OrderTerms, filled_qty: Decimal, filled_value: Decimal
) -> tuple[Decimal, Decimal]:
    if o.notional is not None:
        if o.side == "buy":
            return max(ZERO, o.notional - money(filled_value)), ZERO
        # A notional sell keeps reserving the shares its notional may still need.
        left = max(ZERO, o.notional - money(filled_value))
        return full_reservation(o.side, None, left, o.reserve_price) if left else (ZERO, ZERO)
    return full_reservation(o.side, o.qty, None, o.reserve_price, filled_qty)


def apply_fill(
    order: OrderTerms,
    qty: Decimal,
    price: Decimal,
    lots: list[Lot],
    position_qty: Decimal,
    executed_at: datetime,
) -> FillEffect:
    """The changes one fill makes; FillRefused when applying it would break an invariant."""
    if qty <= 0 or price <= 0:
        raise FillRefused("a fill has a positive quantity and price")
    filled_qty = order.filled_qty + qty
    value = qty * price
    filled_value = order.filled_value + value
    if order.qty is not None and filled_qty > order.qty:
        raise FillRefused(f"overfill: {filled_qty} of {order.qty}")
    if order.notional is not None and money(filled_value) > order.notional:
        raise FillRefused(f"overfill: {money(filled_value)} of notional {order.notional}")
    if order.side == "buy" and order.reserve_price is not None and price > order.reserve_price:
        raise FillRefused(f"buy filled at {price}, above its reserve price {order.reserve_price}")
    cash_left, qty_left = _remaining_reservation(order, filled_qty, filled_value)
    if order.qty is not None:
        complete = filled_qty == order.qty
    else:
        assert order.notional is not None
        # A notional order is done when less than one tick of value is left to buy or sell.
        complete = order.notional - money(filled_value) < Decimal("0.01")
    if complete:
        cash_left, qty_left = ZERO, ZERO
    release_cash = order.reserved_cash - min(order.reserved_cash, cash_left)
    release_qty = order.reserved_qty - min(order.reserved_qty, qty_left)
    avg = (filled_value / filled_qty).quantize(PRICE_PLACES, ROUND_HALF_EVEN)
    if order.side == "buy":
        return FillEffect(
            filled_qty,
            filled_value,
            avg,
            complete,
            cash_delta=-money(value),
            release_cash=release_cash,
            release_qty=ZERO,
            position_qty_delta=qty,
            cost_basis_delta=value,
        )
    if qty > position_qty:
        raise FillRefused(f"oversell: {qty} of a position of {position_qty}")
    closures = close_fifo(lots, qty, price, executed_at)
    return FillEffect(
        filled_qty,
        filled_value,
        avg,
        complete,
        cash_delta=money(value),
        release_cash=ZERO,
        release_qty=release_qty,
        position_qty_delta=-qty,
        cost_basis_delta=-sum((c.cost_basis for c in closures), ZERO),
        closures=closures,
    )


def close_fifo(
    lots: list[Lot], qty: Decimal, price: Decimal, closed_at: datetime
) -> tuple[Closure, ...]:
    """Close `qty` shares from the oldest lots first."""
    left = qty
    out: list[Closure] = []
    for lot in sorted(lots, key=lambda lot: (lot.opened_at, lot.id)):
        if left <= 0:
            break
        take = min(left, lot.remaining_qty)
        if take <= 0:
            continue
        proceeds, cost = take * price, take * lot.price
        out.append(
            Closure(
                lot.id,
                take,
                proceeds,
                cost,
                proceeds - cost,
                closed_at - lot.opened_at > LONG_TERM_AFTER,
            )
        )
        left -= take
    if left > 0:
        raise FillRefused(f"oversell: the open lots hold {qty - left} of {qty}")
    return tuple(out)
