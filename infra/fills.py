"""One fill into the ledger, inside Ledger.apply's transaction (issue 5).

The execution, the order's fill state and status, the account's cash and reservation,
the position and its FIFO tax lots all change in the caller's transaction, after the
event id was recorded (so a redelivered fill changes nothing). What the fill changes is
decided by the pure schemas.positions.apply_fill; a fill it refuses (overfill, oversell,
a buy above its reserve price) raises FillRefused, and the ledger records an anomaly
instead of applying it.

Fill event (oms.executions): {"event_id", "kind": "fill", "at", "order_id",
"account_id", "symbol", "exec_id", "qty", "price", "venue", "route"}.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

import orjson
import psycopg

from schemas.oms import Order
from schemas.order_states import OrderEvent, OrderStatus, transition
from schemas.positions import FillRefused, Lot, OrderTerms, apply_fill

__all__ = ["FillRefused", "record_fill"]

QTY = Decimal("0.000001")  # as positions.qty is stored


def record_fill(
    conn: psycopg.Connection, order: Order, event: dict, at: datetime
) -> tuple[OrderStatus, Decimal]:
    """Apply the fill; the order's status and the position's quantity after it."""
    qty, price = Decimal(str(event["qty"])), Decimal(str(event["price"]))
    exec_id = str(event.get("exec_id") or event["event_id"])
    row = conn.execute("SELECT filled_value FROM orders WHERE id = %s", (order.id,)).fetchone()
    assert row is not None
    terms = OrderTerms(
        side=order.side,
        qty=order.qty,
        notional=order.notional,
        reserve_price=order.reserve_price,
        filled_qty=order.filled_qty,
        filled_value=row[0],
        reserved_cash=order.reserved_cash,
        reserved_qty=order.reserved_qty,
    )
    position_qty, lots = _position(conn, order, lock_lots=order.side == "sell")
    effect = apply_fill(terms, qty, price, lots, position_qty, at)
    held = (position_qty + effect.position_qty_delta).quantize(QTY, ROUND_HALF_UP)
    status = transition(
        order.status, OrderEvent.FILL if effect.complete else OrderEvent.PARTIAL_FILL
    )
    conn.execute(
        "INSERT INTO executions (id, order_id, account_id, symbol, side, qty, price, venue, "
        "route, executed_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            exec_id,
            order.id,
            order.account_id,
            order.symbol,
            order.side,
            qty,
            price,
            str(event.get("venue", "")),
            orjson.dumps(event.get("route", [])).decode(),
            at,
        ),
    )
    conn.execute(
        "UPDATE orders SET filled_qty = %s, filled_value = %s, filled_avg_price = %s, "
        "reserved_cash = reserved_cash - %s, reserved_qty = reserved_qty - %s, status = %s, "
        "hwm = COALESCE(%s, hwm), "
        "filled_at = CASE WHEN %s THEN %s ELSE filled_at END, updated_at = now(), "
        "version = version + 1 WHERE id = %s",
        (
            effect.filled_qty,
            effect.filled_value,
            effect.filled_avg_price,
            effect.release_cash,
            effect.release_qty,
            status.value,
            event.get("hwm"),  # a trailing stop's mark when it triggered
            effect.complete,
            at,
            order.id,
        ),
    )
    conn.execute(
        "UPDATE accounts SET cash = cash + %s, reserved_cash = reserved_cash - %s, "
        "updated_at = now() WHERE id = %s",
        (effect.cash_delta, effect.release_cash, order.account_id),
    )
    conn.execute(
        "UPDATE positions SET qty = qty + %s, reserved_qty = reserved_qty - %s, "
        "cost_basis = cost_basis + %s, updated_at = now() WHERE account_id = %s AND symbol = %s",
        (
            effect.position_qty_delta,
            effect.release_qty,
            effect.cost_basis_delta,
            order.account_id,
            order.symbol,
        ),
    )
    if order.side == "buy":
        conn.execute(
            "INSERT INTO tax_lots (account_id, symbol, execution_id, opened_at, qty, "
            "remaining_qty, price) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (order.account_id, order.symbol, exec_id, at, qty, qty, price),
        )
        return status, held
    for c in effect.closures:
        conn.execute(
            "UPDATE tax_lots SET remaining_qty = remaining_qty - %s WHERE id = %s",
            (c.qty, c.lot_id),
        )
        conn.execute(
            "INSERT INTO lot_closures (lot_id, account_id, symbol, execution_id, closed_at, "
            "qty, proceeds, cost_basis, realized_pnl) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
            ),
        )
    return status, held


def _position(
    conn: psycopg.Connection, order: Order, *, lock_lots: bool
) -> tuple[Decimal, list[Lot]]:
    """The position's quantity (the row made if missing, and locked) and, for sells, its
    open lots oldest first (locked)."""
    locked = "SELECT qty FROM positions WHERE account_id = %s AND symbol = %s FOR UPDATE"
    key = (order.account_id, order.symbol)
    row = conn.execute(locked, key).fetchone()
    if row is None:  # the symbol's first fill for the account: make the row, then lock it
        conn.execute(
            "INSERT INTO positions (account_id, symbol) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            key,
        )
        row = conn.execute(locked, key).fetchone()
    assert row is not None
    if not lock_lots:
        return row[0], []
    lots = conn.execute(
        "SELECT id, opened_at, remaining_qty, price FROM tax_lots "
        "WHERE account_id = %s AND symbol = %s AND remaining_qty > 0 "
        "ORDER BY opened_at, id FOR UPDATE",
        (order.account_id, order.symbol),
    ).fetchall()
    return row[0], [Lot(*r) for r in lots]
