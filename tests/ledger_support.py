"""Shared helpers for the ledger tests: fresh accounts, market views, and the ledger
invariants of DESIGN.md section 3 checked directly in PostgreSQL.

`check_invariants(pool, account_id)` reads the account, its orders and positions in one
REPEATABLE READ snapshot and asserts:
- cash >= 0, 0 <= reserved_cash <= cash, buying_power = cash - reserved_cash;
- reserved_cash = the sum of what the account's open orders reserve; for each position,
  0 <= reserved_qty <= qty and reserved_qty = the sum over its open sell orders;
- closed orders reserve nothing; buys reserve no shares, sells no cash; filled_qty <= qty;
- every open order reserves exactly `full_reservation` of its terms, except during a
  replace window: `request_replace` leaves the old order (pending_replace) holding its
  full reservation and gives the new order only the extra it needs, max(0, new - old);
  `_transfer` moves both to the new order on confirmation. So for such a pair the old
  one holds full(old) and the two together hold max(full(old), full(new));
- a replaced order names its replacement (replaced_by), which names it back (replaces);
  a pending_replace order names an order that replaces it;
- the account's events are numbered 1..accounts.event_seq, each once (no holes).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from psycopg_pool import ConnectionPool

from infra import accounts, db
from infra.ledger import Ledger
from infra.settings import Settings
from infra.topics import Topics
from schemas.oms import ORDER_COLUMNS, Order, order_from_row
from schemas.order_states import OPEN, OrderStatus
from schemas.orders import MarketView, full_reservation
from schemas.sessions import market_session

ZERO = Decimal(0)
# A regular session (Tuesday 2026-11-24, 11:00 New York).
REGULAR_NOW = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)
PRE_MARKET_NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)  # 07:00 New York


def market(
    bid: str | Decimal = "99.99",
    ask: str | Decimal = "100.01",
    *,
    now: datetime = REGULAR_NOW,
    halted: bool = False,
) -> MarketView:
    return MarketView(
        now=now,
        session=market_session(now),
        tradable=True,
        halted=halted,
        bid=Decimal(bid),
        ask=Decimal(ask),
    )


@dataclass
class LedgerEnv:
    settings: Settings
    pool: ConnectionPool
    ledger: Ledger

    def new_account(self, cash: Decimal | int | str = 0) -> UUID:
        _, account = accounts.create_user(
            self.pool, f"l{uuid.uuid4().hex[:12]}@test.local", "Ledger Test"
        )
        if Decimal(cash) > 0:
            self.ledger.deposit(account.id, Decimal(cash))
        return account.id

    def set_position(self, account_id: UUID, symbol: str, qty: Decimal | int | str) -> None:
        """A position as fills will create it (issue 5): inserted directly."""
        with self.pool.connection() as conn:
            conn.execute(
                "INSERT INTO positions (account_id, symbol, qty) VALUES (%s, %s, %s) "
                "ON CONFLICT (account_id, symbol) DO UPDATE SET qty = positions.qty + EXCLUDED.qty",
                (account_id, symbol, Decimal(qty)),
            )


def ledger_env(settings: Settings) -> LedgerEnv:
    pool = db.pool(settings.postgres)
    # A namespace of our own: these tests never relay the outbox to Kafka.
    return LedgerEnv(settings, pool, Ledger(pool, Topics(f"t{uuid.uuid4().hex[:8]}.")))


def _orders(conn: Any, account_id: UUID) -> list[Order]:
    rows = conn.execute(
        f"SELECT {ORDER_COLUMNS} FROM orders WHERE account_id = %s", (account_id,)
    ).fetchall()
    return [order_from_row(row) for row in rows]


def full_of(o: Order) -> tuple[Decimal, Decimal]:
    return full_reservation(o.side, o.qty, o.notional, o.reserve_price, o.filled_qty)


def check_invariants(pool: ConnectionPool, account_id: UUID) -> dict[str, Any]:
    """Assert the ledger invariants for one account; returns what it read (for models)."""
    with pool.connection() as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        acc = conn.execute(
            "SELECT cash, reserved_cash, buying_power FROM accounts WHERE id = %s", (account_id,)
        ).fetchone()
        assert acc is not None, f"no account {account_id}"
        orders = _orders(conn, account_id)
        positions = {
            sym: (qty, res)
            for sym, qty, res in conn.execute(
                "SELECT symbol, qty, reserved_qty FROM positions WHERE account_id = %s",
                (account_id,),
            ).fetchall()
        }
        transfers = conn.execute(
            "SELECT COALESCE(sum(amount), 0) FROM cash_transfers WHERE account_id = %s",
            (account_id,),
        ).fetchone()[0]
        executions = conn.execute(
            "SELECT count(*) FROM executions WHERE account_id = %s", (account_id,)
        ).fetchone()[0]
        # Account events (migration 0004): numbered 1..event_seq, no holes, no duplicates.
        events = conn.execute(
            "SELECT a.event_seq, count(e.seq), COALESCE(max(e.seq), 0), "
            "COALESCE(min(e.seq), 1) FROM accounts a LEFT JOIN account_events e "
            "ON e.account_id = a.id WHERE a.id = %s GROUP BY a.event_seq",
            (account_id,),
        ).fetchone()

    cash, reserved_cash, buying_power = acc
    where = f"account {account_id}"
    assert events[0] == events[1] == events[2] and events[3] == 1, f"{where}: events {events}"
    assert cash >= 0, f"{where}: cash {cash} < 0"
    assert 0 <= reserved_cash <= cash, f"{where}: reserved {reserved_cash}, cash {cash}"
    assert buying_power == cash - reserved_cash
    if executions == 0:
        assert cash == transfers, f"{where}: cash {cash} != deposits {transfers} with no fills"

    by_id = {o.id: o for o in orders}
    open_orders = [o for o in orders if o.status in OPEN]

    # account and position totals
    open_cash = sum((o.reserved_cash for o in open_orders), ZERO)
    assert reserved_cash == open_cash, f"{where}: reserved {reserved_cash} != open {open_cash}"
    symbols = set(positions) | {o.symbol for o in open_orders if o.side == "sell"}
    for sym in symbols:
        qty, res = positions.get(sym, (ZERO, ZERO))
        want = sum((o.reserved_qty for o in open_orders if o.symbol == sym), ZERO)
        assert res == want, f"{where} {sym}: reserved_qty {res} != open sells {want}"
        assert 0 <= res <= qty, f"{where} {sym}: reserved_qty {res}, qty {qty}"

    # per order
    pairs: dict[UUID, Order] = {}  # new order id -> old order whose replace is pending
    for o in orders:
        label = f"order {o.id} ({o.side} {o.type} {o.status})"
        assert o.qty is None or o.filled_qty <= o.qty, f"{label}: filled {o.filled_qty} > qty"
        assert o.filled_qty >= 0
        assert o.reserved_cash >= 0 and o.reserved_qty >= 0, label
        if o.side == "buy":
            assert o.reserved_qty == 0, f"{label} reserves shares"
        else:
            assert o.reserved_cash == 0, f"{label} reserves cash"
        if o.status not in OPEN:
            assert o.reserved_cash == 0 and o.reserved_qty == 0, f"{label} reserves"
        if o.status == OrderStatus.REPLACED:
            assert o.replaced_by is not None, f"{label} has no replaced_by"
            new = by_id.get(o.replaced_by)
            assert new is not None and new.replaces == o.id, f"{label}: replacement mismatch"
        if o.status == OrderStatus.PENDING_REPLACE:
            assert o.replaced_by is not None, f"{label} has no replaced_by"
            new = by_id.get(o.replaced_by)
            assert new is not None and new.replaces == o.id, f"{label}: replacement mismatch"
            if new.status in OPEN:
                pairs[new.id] = o
        if o.replaces is not None:
            old = by_id.get(o.replaces)
            assert old is not None and old.account_id == o.account_id, label
            assert old.replaced_by is not None, f"{label}: replaces an order naming none"

    for o in open_orders:
        full = full_of(o)
        label = f"order {o.id} ({o.side} {o.type} {o.status})"
        old = pairs.get(o.id)
        if old is None:
            held = (o.reserved_cash, o.reserved_qty)
            assert held == full, f"{label}: reserves {held}, its terms need {full}"
            continue
        old_full = full_of(old)
        assert (old.reserved_cash, old.reserved_qty) == old_full, f"pending replace of {label}"
        together = (old.reserved_cash + o.reserved_cash, old.reserved_qty + o.reserved_qty)
        want = (max(old_full[0], full[0]), max(old_full[1], full[1]))
        assert together == want, f"replace {old.id} -> {o.id}: hold {together}, need {want}"
    return {
        "cash": cash,
        "reserved_cash": reserved_cash,
        "orders": by_id,
        "positions": positions,
    }


def outbox_messages(pool: ConnectionPool, topics: Topics) -> list[dict[str, Any]]:
    """Every outbox message for this ledger's topic namespace, in id order."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT convert_from(payload, 'UTF8')::jsonb FROM outbox WHERE topic = %s ORDER BY id",
            (topics.orders,),
        ).fetchall()
    return [r[0] for r in rows]


def check_outbox(pool: ConnectionPool, topics: Topics, account_id: UUID) -> None:
    """Each order of the account went to the outbox exactly once (new, or inside its
    replace); every cancel and replace message names an order of the account."""
    with pool.connection() as conn:
        orders = {o.id: o for o in _orders(conn, account_id)}
    seen: dict[str, int] = {}
    for m in outbox_messages(pool, topics):
        if m["kind"] == "new":
            if m["order"]["account_id"] != str(account_id):
                continue
            seen[m["order"]["id"]] = seen.get(m["order"]["id"], 0) + 1
            continue
        if m["account_id"] != str(account_id):
            continue
        assert UUID(m["order_id"]) in orders, m
        if m["kind"] == "replace":
            new_id = m["order"]["id"]
            seen[new_id] = seen.get(new_id, 0) + 1
            assert orders[UUID(new_id)].replaces == UUID(m["order_id"])
    assert seen == {str(i): 1 for i in orders}, "orders and outbox messages differ"


def drop_outbox(pool: ConnectionPool, topics: Topics) -> None:
    """Remove the outbox rows of a test namespace, so no relay ever meets them."""
    with pool.connection() as conn:
        conn.execute("DELETE FROM outbox WHERE topic = %s", (topics.orders,))
