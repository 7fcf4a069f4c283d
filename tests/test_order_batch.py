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
