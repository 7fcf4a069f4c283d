"""One fill into the ledger, inside a batch of Ledger.apply_batch (issue 5).

The execution, the order's fill state and status, the account's cash and reservation,
the position and its FIFO tax lots all change in the batch's `Book`
(infra/ledger_batch.py), in memory, after the event id was checked (so a redelivered
fill changes nothing); the batch writes them at its end, in its transaction. What the
fill changes is decided by the pure schemas.positions.apply_fill; a fill it refuses
(overfill, oversell, a buy above its reserve price) raises FillRefused before anything
changes, and the ledger records an anomaly instead of applying it.

Fill event (oms.executions): {"event_id", "kind": "fill", "at", "order_id",
"account_id", "symbol", "exec_id", "qty", "price", "venue", "route"}.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING

import orjson

from schemas.oms import Order
from schemas.order_states import OrderEvent, OrderStatus, transition
from schemas.positions import FillRefused, OrderTerms, apply_fill

if TYPE_CHECKING:
    from infra.ledger_batch import Book

__all__ = ["FillRefused", "record_fill"]

# As the columns store them (migration 0002): values kept in memory (here and in the
# batch's Book) are rounded the same way, so what a batch renders (account events) is
# what a later read returns. Prices are stored like cash, to 4 places.
CASH, QTY, VALUE = Decimal("0.0001"), Decimal("0.000001"), Decimal("0.0000000001")


def cash(v: Decimal) -> Decimal:
    return v.quantize(CASH, ROUND_HALF_UP)


def qty(v: Decimal) -> Decimal:
    return v.quantize(QTY, ROUND_HALF_UP)


def value(v: Decimal) -> Decimal:
    return v.quantize(VALUE, ROUND_HALF_UP)


def record_fill(book: Book, order: Order, event: dict, at: datetime) -> tuple[OrderStatus, Decimal]:
    """Apply the fill to the book; the order's status and the position's quantity after."""
    fill_qty, price = Decimal(str(event["qty"])), Decimal(str(event["price"]))
    exec_id = str(event.get("exec_id") or event["event_id"])
    terms = OrderTerms(
        side=order.side,
        qty=order.qty,
        notional=order.notional,
        reserve_price=order.reserve_price,
        filled_qty=order.filled_qty,
        filled_value=book.filled_value[order.id],
        reserved_cash=order.reserved_cash,
        reserved_qty=order.reserved_qty,
    )
    key = (order.account_id, order.symbol)
    position_qty = book.position(key)
    lots = list(book.open_lots(key)) if order.side == "sell" else []
    effect = apply_fill(terms, fill_qty, price, lots, position_qty, at)
    held = qty(position_qty + effect.position_qty_delta)
    status = transition(
        order.status, OrderEvent.FILL if effect.complete else OrderEvent.PARTIAL_FILL
    )
    # Nothing below refuses: the fill applies whole.
    book.executions.append(
        (
            exec_id,
            order.id,
            order.account_id,
            order.symbol,
            order.side,
            fill_qty,
            price,
            str(event.get("venue", "")),
            orjson.dumps(event.get("route", [])).decode(),
            at,
        )
    )
    hwm = event.get("hwm")  # a trailing stop's mark when it triggered
    book.put(
        order,
        filled_qty=qty(effect.filled_qty),
        filled_avg_price=cash(effect.filled_avg_price),
        reserved_cash=cash(order.reserved_cash - effect.release_cash),
        reserved_qty=qty(order.reserved_qty - effect.release_qty),
        status=status,
        hwm=cash(Decimal(str(hwm))) if hwm is not None else order.hwm,
        filled_at=at if effect.complete else order.filled_at,
        updated_at=book.now,
        version=order.version + 1,
    )
    book.assign(book.filled_value, order.id, value(effect.filled_value))
    book.add_cash(order.account_id, effect.cash_delta, -effect.release_cash)
    book.add_position(key, effect.position_qty_delta, -effect.release_qty, effect.cost_basis_delta)
    if order.side == "buy":
        book.open_lot(key, exec_id, at, fill_qty, price)
        return status, held
    book.close_lots(key, {c.lot_id: c.qty for c in effect.closures})
    book.closures += [
        (
            c.lot_id,
            order.account_id,
            order.symbol,
            exec_id,
            at,
            c.qty,
            c.proceeds,
            c.cost_basis,
            c.realized_pnl,
        )
        for c in effect.closures
    ]
    return status, held
