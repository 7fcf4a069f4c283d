"""Fills into the ledger (infra/fills.py through Ledger.apply) on real PostgreSQL: the
order's fill state, cash, reservations, the position, FIFO lots and realized gains,
exactly once per event id; refused fills become anomalies and change nothing."""

from __future__ import annotations

import uuid
from decimal import Decimal as D

import pytest

from schemas.orders import OrderRequest, OrderType, Side, TimeInForce, place
from tests.ledger_support import check_invariants, ledger_env, market

pytestmark = pytest.mark.services
N = 0


def _event(kind: str, order_id, **extra) -> dict:
    global N
    N += 1
    return {
        "event_id": f"{kind}:{uuid.uuid4()}",
        "kind": kind,
        "at": 1_764_000_000_000_000_000 + N,
        "order_id": str(order_id),
        **extra,
    }


def _fill(order_id, qty: str, price: str, venue: str = "iex") -> dict:
    e = _event("fill", order_id, qty=qty, price=price, venue=venue, route=[venue])
    e["exec_id"] = e["event_id"]
    return e


@pytest.fixture
def env(services):
    return ledger_env(services)


def _place(env, account, side: Side, qty: str, limit: str):
    req = OrderRequest(
        "FILL", side, OrderType.LIMIT, TimeInForce.DAY, qty=D(qty), limit_price=D(limit)
    )
    order = env.ledger.place(account, req, place(req, market()))
    assert env.ledger.apply(_event("acknowledged", order.id)).outcome == "applied"
    return order


def _row(env, sql: str, *params):
    with env.pool.connection() as conn:
        return conn.execute(sql, params).fetchone()


def _assert_position_is_its_fills(env, account) -> None:
    got = _row(
        env,
        "SELECT qty, cost_basis FROM positions WHERE account_id = %s AND symbol = 'FILL'",
        account,
    )
    fills = _row(
        env,
        "SELECT COALESCE(sum(CASE WHEN side = 'buy' THEN qty ELSE -qty END), 0) "
        "FROM executions WHERE account_id = %s AND symbol = 'FILL'",
        account,
    )
    lots = _row(
        env,
        "SELECT COALESCE(sum(remaining_qty), 0), COALESCE(sum(remaining_qty * "
        "price), 0) FROM tax_lots WHERE account_id = %s",
        account,
    )
    assert got[0] == fills[0] == lots[0]
    assert got[1] == lots[1]


def test_buy_fills_partially_then_fully(env):
    account = env.new_account("5000")
    order = _place(env, account, Side.BUY, "10", "100.00")
    assert env.ledger.balance(account).reserved_cash == D("1000")

    first = _fill(order.id, "4", "99.50")
    assert env.ledger.apply(first).outcome == "applied"
    assert env.ledger.apply(first).outcome == "duplicate"  # redelivered: nothing changes
    o = env.ledger.get(account, order.id)
    assert (o.status, o.filled_qty, o.filled_avg_price) == ("partially_filled", 4, D("99.5"))
    bal = env.ledger.balance(account)
    assert (bal.cash, bal.reserved_cash) == (D("4602.0000"), D("600.0000"))
    check_invariants(env.pool, account)

    env.ledger.apply(_fill(order.id, "6", "99.00"))
    o = env.ledger.get(account, order.id)
    assert (o.status, o.filled_qty, o.reserved_cash) == ("filled", 10, 0)
    assert o.filled_avg_price == D("99.2000") and o.filled_at is not None
    bal = env.ledger.balance(account)
    assert (bal.cash, bal.reserved_cash) == (D("4008.0000"), 0)
    _assert_position_is_its_fills(env, account)
    check_invariants(env.pool, account)


def test_a_fill_redelivered_with_other_content_is_kept_as_applied_and_recorded(env):
    """After a crash the execution flow decides again from its snapshot and may give a
    fill number another size or price: the ledger keeps the first (applying both would
    fill the order twice) and records the disagreement; an identical redelivery stays a
    plain duplicate."""
    account = env.new_account("5000")
    order = _place(env, account, Side.BUY, "10", "100.00")
    first = _fill(order.id, "4", "99.50")
    assert env.ledger.apply(first).outcome == "applied"
    assert env.ledger.apply(dict(first)).outcome == "duplicate"

    again = {**first, "qty": "10", "price": "99.60"}
    result = env.ledger.apply(again)
    assert result.outcome == "anomaly"
    assert "applied as 4.000000 at 99.5000 on iex" in result.reason
    assert "redelivered as 10 at 99.60 on iex" in result.reason
    o = env.ledger.get(account, order.id)
    assert (o.status, o.filled_qty, o.filled_avg_price) == ("partially_filled", 4, D("99.5"))
    recorded = _row(
        env, "SELECT kind, reason FROM ledger_anomalies WHERE event_id = %s", first["event_id"]
    )
    assert recorded[0] == "fill" and recorded[1].startswith("conflicting redelivery")
    # Delivered again, the same disagreement is recorded once.
    assert env.ledger.apply(again).outcome == "anomaly"
    n = _row(env, "SELECT count(*) FROM ledger_anomalies WHERE event_id = %s", first["event_id"])
    assert n == (1,)
    _assert_position_is_its_fills(env, account)
    check_invariants(env.pool, account)


def test_a_sell_closes_lots_fifo_and_realizes_the_gain(env):
    account = env.new_account("5000")
    for price in ("100.00", "120.00"):
        buy = _place(env, account, Side.BUY, "5", price)
        env.ledger.apply(_fill(buy.id, "5", price))
    sell = _place(env, account, Side.SELL, "7", "130.00")
    assert _row(env, "SELECT reserved_qty FROM positions WHERE account_id = %s", account) == (7,)
    env.ledger.apply(_fill(sell.id, "7", "130.00"))
    gains = _row(
        env, "SELECT sum(realized_pnl), count(*) FROM lot_closures WHERE account_id = %s", account
    )
    assert gains == (D("170"), 2)  # 5 x 30 from the first lot, 2 x 10 from the second
    assert env.ledger.balance(account).cash == D(5000) - 500 - 600 + 910
    assert env.ledger.get(account, sell.id).status == "filled"
    _assert_position_is_its_fills(env, account)
    check_invariants(env.pool, account)


def test_overfill_and_a_buy_above_its_limit_are_anomalies_that_change_nothing(env):
    account = env.new_account("5000")
    order = _place(env, account, Side.BUY, "2", "50.00")
    before = (env.ledger.balance(account), env.ledger.get(account, order.id))
    for bad in (_fill(order.id, "3", "50.00"), _fill(order.id, "1", "50.01")):
        applied = env.ledger.apply(bad)
        assert applied.outcome == "anomaly", applied
    assert (env.ledger.balance(account), env.ledger.get(account, order.id)) == before
    assert _row(env, "SELECT count(*) FROM ledger_anomalies WHERE order_id = %s", order.id) == (2,)
    check_invariants(env.pool, account)


def test_a_cancel_racing_a_fill_leaves_a_consistent_ledger(env):
    """The cancel request is made, a partial fill lands first, then the cancel confirms:
    the filled part stays, the rest of the reservation comes back."""
    account = env.new_account("1000")
    order = _place(env, account, Side.BUY, "10", "10.00")
    env.ledger.request_cancel(account, order.id)
    env.ledger.apply(_fill(order.id, "3", "9.90"))
    assert env.ledger.get(account, order.id).status == "pending_cancel"
    env.ledger.apply(_event("canceled", order.id))
    o = env.ledger.get(account, order.id)
    assert (o.status, o.filled_qty, o.reserved_cash) == ("canceled", 3, 0)
    bal = env.ledger.balance(account)
    assert (bal.cash, bal.reserved_cash) == (D("970.3000"), 0)
    _assert_position_is_its_fills(env, account)
    check_invariants(env.pool, account)


def test_a_replace_that_lost_the_race_to_a_fill_releases_the_replacement(env):
    """The old order filled at the desk before the replace arrived: the desk refuses the
    replace; the replacement is rejected and nothing it reserved stays reserved."""
    account = env.new_account("5000")
    old = _place(env, account, Side.BUY, "10", "100.00")

    def build(o):
        req = OrderRequest(
            "FILL", Side.BUY, OrderType.LIMIT, TimeInForce.DAY, qty=D("20"), limit_price=D("100")
        )
        return req, place(req, market()), None

    new = env.ledger.request_replace(account, old.id, build)
    assert env.ledger.balance(account).reserved_cash == D("2000")  # old 1000 + extra 1000
    env.ledger.apply(_fill(old.id, "10", "99.00"))
    refused = _event("replace_rejected", old.id, replaced_by=str(new.id), reason="filled")
    assert env.ledger.apply(refused).outcome == "applied"
    assert env.ledger.get(account, old.id).status == "filled"
    assert env.ledger.get(account, new.id).status == "rejected"
    assert env.ledger.balance(account).reserved_cash == 0
    check_invariants(env.pool, account)


def test_a_cancel_refused_because_the_order_filled_changes_nothing(env):
    account = env.new_account("5000")
    order = _place(env, account, Side.BUY, "10", "100.00")
    env.ledger.request_cancel(account, order.id)
    env.ledger.apply(_fill(order.id, "10", "99.00"))
    late = env.ledger.apply(_event("cancel_rejected", order.id))
    assert late.outcome == "applied"
    assert env.ledger.get(account, order.id).status == "filled"
    check_invariants(env.pool, account)


def test_a_trailing_stops_mark_is_kept_on_the_order(env):
    account = env.new_account("5000")
    order = _place(env, account, Side.BUY, "1", "100.00")
    fill = _fill(order.id, "1", "99.00")
    fill["hwm"] = "98.50"
    env.ledger.apply(fill)
    assert env.ledger.get(account, order.id).hwm == D("98.5")
