"""Placement in one statement (infra/order_batch.py, migration 0008): the caller builds
each accepted order's row, outbox payload and stored answer before the call, so what it
answers must be exactly what PostgreSQL stored. Real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from uuid import UUID

import pytest

from infra.ledger import InsufficientBuyingPower, InsufficientQty
from infra.order_batch import Contended, NewOrder, place_batch
from schemas.oms import Order, decode, encode, order_wire
from schemas.orders import OrderRequest, OrderType, Side, TimeInForce, place
from tests.ledger_support import (
    LedgerEnv,
    check_invariants,
    drop_outbox,
    ledger_env,
    market,
    outbox_messages,
)


@pytest.fixture
def env(services) -> Iterator[LedgerEnv]:
    env = ledger_env(services)
    try:
        yield env
    finally:
        drop_outbox(env.pool, env.ledger.topics)


def _req(side: Side, type_: OrderType, tif: TimeInForce = TimeInForce.DAY, **terms) -> OrderRequest:
    return OrderRequest("AAA", side, type_, tif, **terms)


# Every kind of term a new order row stores, with values whose scale differs from the
# column's (so the row built in Python must be scaled as PostgreSQL scales it).
REQUESTS = [
    _req(Side.BUY, OrderType.MARKET, qty=Decimal("2")),
    _req(Side.BUY, OrderType.MARKET, notional=Decimal("150.5")),
    _req(Side.BUY, OrderType.LIMIT, qty=Decimal("1.5"), limit_price=Decimal("99.1")),
    _req(Side.BUY, OrderType.LIMIT, TimeInForce.GTC, qty=Decimal("2"), limit_price=Decimal("98")),
    _req(Side.SELL, OrderType.STOP, qty=Decimal("3"), stop_price=Decimal("95")),
    _req(
        Side.SELL,
        OrderType.STOP_LIMIT,
        qty=Decimal("1"),
        stop_price=Decimal("95"),
        limit_price=Decimal("94.5"),
    ),
    _req(Side.SELL, OrderType.TRAILING_STOP, qty=Decimal("2"), trail_percent=Decimal("1.25")),
    _req(Side.SELL, OrderType.TRAILING_STOP, qty=Decimal("1"), trail_price=Decimal("0.5")),
    _req(
        Side.BUY,
        OrderType.LIMIT,
        qty=Decimal("1"),
        limit_price=Decimal("100"),
        extended_hours=True,
    ),
]


def _items(account: UUID, requests: list[OrderRequest]) -> list[NewOrder]:
    def render(order: Order) -> bytes:
        return encode(order_wire(order))

    return [
        NewOrder(account, r, place(r, market()), idempotency=(f"key-{i}", b"h"), render=render)
        for i, r in enumerate(requests)
    ]


def test_each_answer_is_the_row_postgresql_stored(env: LedgerEnv) -> None:
    account = env.new_account("10000.00")
    env.set_position(account, "AAA", 10)
    items = _items(account, REQUESTS)
    with env.pool.connection() as conn:
        outcomes = place_batch(conn, items, env.ledger.topics.orders)
    assert all(isinstance(o, Order) for o in outcomes), outcomes
    for item, order in zip(items, outcomes, strict=True):
        assert isinstance(order, Order)
        assert order.id == item.order_id  # answered in the items' order, not the sorted one
        stored = env.ledger.get(account, order.id)
        assert order == stored
        # Decimals compare equal at any scale: the encodings must be the same bytes too
        assert encode(order_wire(order)) == encode(order_wire(stored))
    # the outbox payloads and the stored answers, too
    sent = {m["order"]["id"]: m["order"] for m in outbox_messages(env.pool, env.ledger.topics)}
    for order in outcomes:
        assert isinstance(order, Order)
        stored = decode(encode(order_wire(env.ledger.get(account, order.id))))
        assert sent[str(order.id)] == stored
    with env.pool.connection() as conn:
        bodies = dict(
            conn.execute(
                "SELECT key, body FROM idempotency_keys WHERE account_id = %s", (account,)
            ).fetchall()
        )
    for i, order in enumerate(outcomes):
        assert isinstance(order, Order)
        assert decode(bodies[f"key-{i}"]) == decode(encode(order_wire(order)))
    check_invariants(env.pool, account)


def test_a_refused_order_leaves_no_row_no_message_and_no_answer(env: LedgerEnv) -> None:
    account = env.new_account("150.00")
    env.set_position(account, "AAA", 1)
    buy = _req(Side.BUY, OrderType.LIMIT, qty=Decimal("1"), limit_price=Decimal("100"))
    big_buy = _req(Side.BUY, OrderType.LIMIT, qty=Decimal("1"), limit_price=Decimal("100"))
    sell = _req(Side.SELL, OrderType.MARKET, qty=Decimal("2"))
    items = _items(account, [buy, big_buy, sell])
    items[2] = NewOrder(account, sell, place(sell, market()), idempotency=("key-2", b"h"))
    # the same key as the first: a concurrent request's, answered from the stored one
    dup = NewOrder(account, buy, place(buy, market()), idempotency=("key-0", b"h"))
    with env.pool.connection() as conn:
        outcomes = place_batch(conn, [*items, dup], env.ledger.topics.orders)
    assert isinstance(outcomes[0], Order)
    assert isinstance(outcomes[1], InsufficientBuyingPower)
    assert isinstance(outcomes[2], InsufficientQty)
    assert isinstance(outcomes[3], Contended)
    placed = env.ledger.list(account, status="all")
    assert [o.id for o in placed] == [items[0].order_id]
    messages = [m for m in outbox_messages(env.pool, env.ledger.topics) if m["kind"] == "new"]
    assert [m["order"]["id"] for m in messages] == [str(items[0].order_id)]
    with env.pool.connection() as conn:
        keys = conn.execute(
            "SELECT key FROM idempotency_keys WHERE account_id = %s", (account,)
        ).fetchall()
    assert keys == [("key-0",)]
    assert env.ledger.balance(account).reserved_cash == Decimal("100.0000")
    check_invariants(env.pool, account)


# -- migration 0009: a batch with no Idempotency-Key in a few set-based statements -------


def _plain(account: UUID, requests: list[OrderRequest]) -> list[NewOrder]:
    return [NewOrder(account, r, place(r, market())) for r in requests]


def test_a_plain_batch_that_fits_is_stored_reserved_and_queued_in_order(env: LedgerEnv) -> None:
    """The set-based path (no key, every total fits): the same rows, reservations and
    outbox messages, in the items' order, as the order-by-order path gives."""
    one, two = env.new_account("10000.00"), env.new_account("10000.00")
    for acc in (one, two):
        env.set_position(acc, "AAA", 10)
    items = _plain(one, REQUESTS) + _plain(two, REQUESTS[::-1])
    with env.pool.connection() as conn:
        outcomes = place_batch(conn, items, env.ledger.topics.orders)
    assert all(isinstance(o, Order) for o in outcomes), outcomes
    for item, order in zip(items, outcomes, strict=True):
        assert isinstance(order, Order) and order.id == item.order_id
        assert encode(order_wire(order)) == encode(
            order_wire(env.ledger.get(order.account_id, order.id))
        )
    # queued in the order the statement received them (buys, then sells, by account)
    sent = [m["order"]["id"] for m in outbox_messages(env.pool, env.ledger.topics)]
    ordered = sorted(
        items, key=lambda it: (it.request.side == "sell", it.account_id, it.request.symbol)
    )
    assert sent == [str(it.order_id) for it in ordered]
    for acc in (one, two):
        mine = [o for o in outcomes if isinstance(o, Order) and o.account_id == acc]
        balance = env.ledger.balance(acc)
        assert balance.reserved_cash == sum((o.reserved_cash for o in mine), Decimal(0))
        with env.pool.connection() as conn:
            reserved_qty = conn.execute(
                "SELECT reserved_qty FROM positions WHERE account_id = %s AND symbol = 'AAA'",
                (acc,),
            ).fetchone()[0]
        assert reserved_qty == sum((o.reserved_qty for o in mine), Decimal(0)) == 7
        check_invariants(env.pool, acc)


def test_a_plain_batch_that_does_not_fit_is_decided_order_by_order(env: LedgerEnv) -> None:
    """400 + 700 + 300 of buying power against 1,000: in arrival order the 700 is refused
    and the 300 still fits, as one order at a time decides; a sell of a position that
    does not exist is refused; a client_order_id used twice is refused the second time."""
    account = env.new_account("1000.00")

    def buy(amount: str) -> OrderRequest:
        return _req(Side.BUY, OrderType.LIMIT, qty=Decimal("1"), limit_price=Decimal(amount))

    sell = OrderRequest("ZZZ", Side.SELL, OrderType.MARKET, TimeInForce.DAY, qty=Decimal("1"))
    items = _plain(account, [buy("400"), buy("700"), buy("300"), sell])
    with env.pool.connection() as conn:
        outcomes = place_batch(conn, items, env.ledger.topics.orders)
    assert [type(o) for o in outcomes] == [Order, InsufficientBuyingPower, Order, InsufficientQty]
    assert env.ledger.balance(account).reserved_cash == Decimal("700.0000")
    again = NewOrder(account, buy("1"), place(buy("1"), market()), client_order_id="same")
    twice = NewOrder(account, buy("1"), place(buy("1"), market()), client_order_id="same")
    with env.pool.connection() as conn:
        outcomes = place_batch(conn, [again, twice], env.ledger.topics.orders)
    assert [type(o).__name__ for o in outcomes] == ["Order", "DuplicateClientOrderId"]
    sent = [m["order"]["id"] for m in outbox_messages(env.pool, env.ledger.topics)]
    assert sent == [str(items[0].order_id), str(items[2].order_id), str(again.order_id)]
    assert env.ledger.balance(account).reserved_cash == Decimal("701.0000")
    check_invariants(env.pool, account)
