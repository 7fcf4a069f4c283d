"""Many threads against one account through `Ledger`, on the real PostgreSQL: the
reservations serialize on the account (or position) row, so nothing is ever overspent
or oversold, a cancel is requested once, and an Idempotency-Key yields one order."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest
from psycopg_pool import ConnectionPool

from infra.ledger import (
    DuplicateClientOrderId,
    InsufficientBuyingPower,
    InsufficientQty,
    Ledger,
    NotCancelable,
    Replay,
    request_hash,
)
from schemas.oms import Order, now_ns
from schemas.orders import OrderRequest, OrderType, Side, TimeInForce, place
from tests.ledger_support import (
    LedgerEnv,
    check_invariants,
    check_outbox,
    drop_outbox,
    ledger_env,
    market,
    outbox_messages,
)

THREADS = 50


@pytest.fixture
def env(services) -> Iterator[LedgerEnv]:
    base = ledger_env(services)
    # A pool of its own, wide enough that most threads really hold a connection at once.
    pool = ConnectionPool(
        services.postgres, min_size=4, max_size=32, kwargs={"autocommit": True}, open=False
    )
    pool.open(wait=True, timeout=10)
    env = LedgerEnv(services, pool, Ledger(pool, base.ledger.topics))
    try:
        yield env
    finally:
        drop_outbox(pool, env.ledger.topics)
        pool.close()


def race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..n-1) in n threads released together; results or raised exceptions."""
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait()
        try:
            return fn(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def limit(side: Side, qty: int, price: str = "100.00", symbol: str = "AAA") -> OrderRequest:
    return OrderRequest(
        symbol, side, OrderType.LIMIT, TimeInForce.DAY, qty=Decimal(qty), limit_price=Decimal(price)
    )


def kinds(results: list[Any]) -> Counter[str]:
    return Counter(type(r).__name__ for r in results)


def test_concurrent_buys_never_overspend(env: LedgerEnv) -> None:
    account = env.new_account("7000.00")
    req = limit(Side.BUY, 10)  # 10 x 100.00 = 1/7 of the cash
    placement = place(req, market())
    assert placement.reserve_cash == Decimal("1000.0000")
    results = race(THREADS, lambda i: env.ledger.place(account, req, placement))
    assert kinds(results) == {"Order": 7, "InsufficientBuyingPower": THREADS - 7}, kinds(results)
    assert all(r.status == 403 for r in results if isinstance(r, InsufficientBuyingPower))
    balance = env.ledger.balance(account)
    assert balance.reserved_cash == 7 * placement.reserve_cash
    assert balance.buying_power == 0 and balance.cash == Decimal("7000")
    check_invariants(env.pool, account)
    check_outbox(env.pool, env.ledger.topics, account)


def test_concurrent_buys_of_different_sizes_never_overspend(env: LedgerEnv) -> None:
    account = env.new_account("5000.00")
    sizes = [1 + i % 9 for i in range(THREADS)]  # 100.00 .. 900.00 each

    def buy(i: int) -> Any:
        req = limit(Side.BUY, sizes[i])
        return env.ledger.place(account, req, place(req, market()))

    results = race(THREADS, buy)
    placed = [r for r in results if isinstance(r, Order)]
    assert {type(r) for r in results} <= {Order, InsufficientBuyingPower}
    spent = sum((o.reserved_cash for o in placed), Decimal(0))
    assert spent <= Decimal(5000)
    # every refusal was right: at that moment the order did not fit (at most 900 short)
    assert Decimal(5000) - spent < 900
    assert env.ledger.balance(account).reserved_cash == spent
    check_invariants(env.pool, account)


def test_concurrent_sells_never_oversell(env: LedgerEnv) -> None:
    account = env.new_account()
    env.set_position(account, "AAA", 70)
    req = limit(Side.SELL, 10)
    placement = place(req, market())
    results = race(THREADS, lambda i: env.ledger.place(account, req, placement))
    assert kinds(results) == {"Order": 7, "InsufficientQty": THREADS - 7}, kinds(results)
    with env.pool.connection() as conn:
        qty, reserved = conn.execute(
            "SELECT qty, reserved_qty FROM positions WHERE account_id = %s AND symbol = 'AAA'",
            (account,),
        ).fetchone()
    assert (qty, reserved) == (70, 70)
    check_invariants(env.pool, account)
    check_outbox(env.pool, env.ledger.topics, account)


def _cancels(env: LedgerEnv, order_id: UUID) -> int:
    return sum(
        1
        for m in outbox_messages(env.pool, env.ledger.topics)
        if m["kind"] == "cancel" and m["order_id"] == str(order_id)
    )


@pytest.mark.parametrize("acknowledged", [False, True])
def test_concurrent_cancels_request_once(env: LedgerEnv, acknowledged: bool) -> None:
    account = env.new_account("10000.00")
    req = limit(Side.BUY, 10)
    order = env.ledger.place(account, req, place(req, market()))
    assert isinstance(order, Order)
    if acknowledged:
        event = {"event_id": f"a:{uuid4()}", "kind": "acknowledged", "at": now_ns()}
        assert env.ledger.apply({**event, "order_id": str(order.id)}).outcome == "applied"
    results = race(THREADS, lambda i: env.ledger.request_cancel(account, order.id))
    assert kinds(results) == {"Order": 1, "NotCancelable": THREADS - 1}, kinds(results)
    assert _cancels(env, order.id) == 1
    assert env.ledger.get(account, order.id).status == "pending_cancel"
    check_invariants(env.pool, account)


def test_cancel_all_racing_single_cancels_requests_each_order_once(env: LedgerEnv) -> None:
    account = env.new_account("10000.00")
    req = limit(Side.BUY, 1)
    orders = [env.ledger.place(account, req, place(req, market())) for _ in range(10)]
    ids = [o.id for o in orders if isinstance(o, Order)]

    def work(i: int) -> Any:
        if i % 5 == 0:
            return env.ledger.cancel_all(account)
        return env.ledger.request_cancel(account, ids[i % len(ids)])

    results = race(20, work)
    assert not [r for r in results if isinstance(r, Exception) and not isinstance(r, NotCancelable)]
    for oid in ids:
        assert _cancels(env, oid) == 1
        assert env.ledger.get(account, oid).status == "pending_cancel"
    check_invariants(env.pool, account)


def _idempotent_place(
    env: LedgerEnv, account: UUID, req: OrderRequest, coid: str | None, key: str
) -> Callable[[int], Any]:
    digest = request_hash("POST", "/v1/orders", repr(req).encode())
    placement = place(req, market())

    def render(order: Order) -> bytes:
        return f"order {order.id}".encode()

    def call(i: int) -> Any:
        return env.ledger.place(
            account, req, placement, coid, idempotency=(key, digest), render=render
        )

    return call


@pytest.mark.parametrize(
    ("cash", "coid"),
    [("100000.00", None), ("100000.00", "my-order-1"), ("1000.00", None)],
    ids=["plenty", "client-order-id", "cash-for-one"],
)
def test_concurrent_idempotent_places_make_one_order(
    env: LedgerEnv, cash: str, coid: str | None
) -> None:
    account = env.new_account(cash)
    req = limit(Side.BUY, 10)  # 1000.00
    results = race(THREADS, _idempotent_place(env, account, req, coid, "key-1"))
    orders = [r for r in results if isinstance(r, Order)]
    replays = [r for r in results if isinstance(r, Replay)]
    assert len(orders) == 1, kinds(results)
    assert len(replays) == THREADS - 1, kinds(results)
    body = f"order {orders[0].id}".encode()
    assert {(r.status_code, r.body) for r in replays} == {(200, body)}
    assert env.ledger.balance(account).reserved_cash == Decimal("1000.0000")
    assert len(env.ledger.list(account, status="all")) == 1
    check_invariants(env.pool, account)
    check_outbox(env.pool, env.ledger.topics, account)
    # a later retry gets the same answer
    again = _idempotent_place(env, account, req, coid, "key-1")(0)
    assert isinstance(again, Replay) and again.body == body


def test_concurrent_distinct_client_order_ids_collide_once(env: LedgerEnv) -> None:
    account = env.new_account("100000.00")
    req = limit(Side.BUY, 1)
    placement = place(req, market())
    results = race(20, lambda i: env.ledger.place(account, req, placement, "same-coid"))
    assert kinds(results) == {"Order": 1, "DuplicateClientOrderId": 19}, kinds(results)
    assert all(r.status == 422 for r in results if isinstance(r, DuplicateClientOrderId))
    check_invariants(env.pool, account)


def test_mixed_load_keeps_the_invariants(env: LedgerEnv) -> None:
    """Buys, sells, cancels, replaces and execution answers interleaved from many threads."""
    account = env.new_account("20000.00")
    env.set_position(account, "AAA", 100)
    seed = [env.ledger.place(account, limit(Side.BUY, 5), place(limit(Side.BUY, 5), market()))]
    lock = threading.Lock()
    known: list[UUID] = [o.id for o in seed if isinstance(o, Order)]
    expected = (InsufficientBuyingPower, InsufficientQty, NotCancelable, Exception)

    def work(i: int) -> Any:
        op = i % 6
        target = known[(i * 7) % len(known)]
        if op == 0:
            req = limit(Side.BUY, 1 + i % 13)
        elif op == 1:
            req = limit(Side.SELL, 1 + i % 11)
        else:
            req = None
        if req is not None:
            out = env.ledger.place(account, req, place(req, market()))
            with lock:
                known.append(out.id)
            return out
        if op == 2:
            return env.ledger.request_cancel(account, target)
        if op == 3:
            event = {"event_id": f"c:{target}", "kind": "canceled", "at": now_ns()}
            return env.ledger.apply({**event, "order_id": str(target)})
        if op == 4:
            event = {"event_id": f"a:{target}", "kind": "acknowledged", "at": now_ns()}
            return env.ledger.apply({**event, "order_id": str(target)})
        new = limit(Side.BUY, 2 + i % 5)
        return env.ledger.request_replace(
            account, target, lambda old: (new, place(new, market()), None)
        )

    for _ in range(4):
        results = race(30, work)
        bad = [
            r for r in results if isinstance(r, Exception) and type(r).__module__ != "infra.ledger"
        ]
        assert not bad, bad
        assert expected  # refusals of the ledger (403/422) are fine
        check_invariants(env.pool, account)


def test_concurrent_answers_for_one_order_apply_once(env: LedgerEnv) -> None:
    """Distinct answers for the same order at once. Was: DeadlockDetected out of `apply`
    (each took a key-share lock through applied_events' foreign key, then both tried to
    upgrade it to FOR UPDATE)."""
    account = env.new_account("10000.00")
    req = limit(Side.BUY, 10)
    order = env.ledger.place(account, req, place(req, market()))
    assert isinstance(order, Order)

    def answer(i: int) -> Any:
        kind = ("acknowledged", "canceled")[i % 2]
        event = {"event_id": f"{kind}:{i}:{order.id}", "kind": kind, "at": now_ns()}
        return env.ledger.apply({**event, "order_id": str(order.id)}).outcome

    results = race(20, answer)
    assert not [r for r in results if isinstance(r, Exception)], results
    # canceled wins at once, or after an acknowledgement: everything else is an anomaly
    assert Counter(results)["applied"] in (1, 2), results
    assert env.ledger.get(account, order.id).status == "canceled"
    assert env.ledger.balance(account).reserved_cash == 0
    check_invariants(env.pool, account)


def test_an_answer_for_an_unknown_order_is_an_anomaly(env: LedgerEnv) -> None:
    """Was: ForeignKeyViolation out of `apply` (applied_events references orders), where
    the ledger means to record an anomaly."""
    unknown = uuid4()
    event = {"event_id": f"u:{unknown}", "kind": "canceled", "at": now_ns()}
    result = env.ledger.apply({**event, "order_id": str(unknown)})
    assert result.outcome == "anomaly"
    with env.pool.connection() as conn:
        row = conn.execute(
            "SELECT order_id, kind FROM ledger_anomalies WHERE event_id = %s",
            (event["event_id"],),
        ).fetchone()
    assert row == (unknown, "canceled")


def test_concurrent_reuse_of_a_key_with_another_body_is_refused(env: LedgerEnv) -> None:
    account = env.new_account("100000.00")
    calls = [
        _idempotent_place(env, account, limit(Side.BUY, 1 + i % 2), None, "key-2") for i in range(2)
    ]
    results = race(20, lambda i: calls[i % 2](i))
    placed = [r for r in results if isinstance(r, Order)]
    assert len(placed) == 1, kinds(results)
    # the same body replays, the other one is refused (422)
    winner = 0 if placed[0].qty == 1 else 1
    for i, r in enumerate(results):
        if r is placed[0]:
            continue
        assert type(r).__name__ == ("Replay" if i % 2 == winner else "IdempotencyKeyReused"), r
    check_invariants(env.pool, account)
