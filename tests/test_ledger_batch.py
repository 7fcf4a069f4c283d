"""Ledger.apply_batch (infra/ledger_batch.py) on real PostgreSQL: a batch applied in a
few round trips leaves exactly what the same events applied one at a time leave, and an
event the ledger refuses inside a batch leaves nothing of itself while the rest applies."""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal as D
from uuid import UUID

import orjson
import pytest

from infra import ledger_batch, order_batch
from infra.ledger_batch import Book
from infra.order_batch import NewOrder, place_batch
from schemas.orders import OrderRequest, OrderType, Side, TimeInForce, place
from schemas.positions import FillRefused
from tests.e2e_support import until
from tests.ledger_support import check_invariants, ledger_env, market

pytestmark = pytest.mark.services
T0 = 1_764_000_000_000_000_000


@pytest.fixture
def env(services):
    return ledger_env(services)


def _event(kind: str, order_id, at: int, **extra) -> dict:
    return {
        "event_id": f"{kind}:{uuid.uuid4()}",
        "kind": kind,
        "at": T0 + at * 1000,  # microseconds apart, as PostgreSQL keeps them
        "order_id": str(order_id),
        **extra,
    }


def _fill(order_id, qty: str, price: str, at: int) -> dict:
    e = _event("fill", order_id, at, qty=qty, price=price, venue="iex", route=["iex"])
    e["exec_id"] = e["event_id"]
    return e


def _place(env, account, symbol: str, side: Side, qty: str, limit: str, ack: bool = True):
    req = OrderRequest(
        symbol, side, OrderType.LIMIT, TimeInForce.DAY, qty=D(qty), limit_price=D(limit)
    )
    order = env.ledger.place(account, req, place(req, market()))
    if ack:
        assert env.ledger.apply(_event("acknowledged", order.id, 0)).outcome == "applied"
    return order


def _scenario(env) -> tuple[UUID, list[dict], dict[UUID, str]]:
    """An account with history, and a batch of answers mixing good ones with every kind
    of refusal: the account, the events, and a name for each order (to compare)."""
    account = env.new_account("10000")
    held = _place(env, account, "BTA", Side.BUY, "10", "100.00")
    assert env.ledger.apply(_fill(held.id, "10", "100.00", 10)).outcome == "applied"
    a1 = _place(env, account, "BTA", Side.BUY, "10", "100.00")
    a2 = _place(env, account, "BTB", Side.BUY, "5", "50.00")
    b2 = _place(env, account, "BTA", Side.BUY, "5", "110.00")
    s1 = _place(env, account, "BTA", Side.SELL, "6", "90.00")
    s2 = _place(env, account, "BTA", Side.SELL, "4", "90.00")
    r = _place(env, account, "BTC", Side.BUY, "3", "40.00")

    def build(o):
        req = OrderRequest(
            "BTC", Side.BUY, OrderType.LIMIT, TimeInForce.DAY, qty=D("4"), limit_price=D("41")
        )
        return req, place(req, market()), None

    r2 = env.ledger.request_replace(account, r.id, build)
    first = _fill(a1.id, "4", "99.50", 20)
    events = [
        first,
        _fill(a1.id, "7", "99.00", 21),  # overfill: 11 of 10
        _fill(a1.id, "6", "99.00", 22),
        first,  # redelivered in the same batch
        _event("canceled", a1.id, 23),  # filled: an illegal transition
        _fill(a2.id, "1", "50.01", 24),  # above its limit: a first buy of BTB refused
        _event("acknowledged", uuid.uuid4(), 25),  # no such order
        _event("canceled", a2.id, 26),
        # opened before the held lot: FIFO closes this batch's own lot first
        _fill(b2.id, "5", "105.00", 5),
        _fill(s1.id, "6", "120.00", 27),
        _fill(s2.id, "40", "120.00", 28),  # oversell (and overfill)
        _fill(s2.id, "4", "121.00", 29),
        _event("replaced", r.id, 30, replaced_by=str(r2.id)),
        _fill(r2.id, "4", "40.50", 31),
    ]
    names = {held.id: "held", a1.id: "a1", a2.id: "a2", b2.id: "b2", s1.id: "s1"}
    names |= {s2.id: "s2", r.id: "r", r2.id: "r2"}
    return account, events, names


def _state(env, account: UUID, names: dict[UUID, str]) -> dict:
    """Everything the ledger holds for the account, ids replaced by names."""

    def rows(sql: str) -> list[tuple]:
        with env.pool.connection() as conn:
            return conn.execute(sql, (account,)).fetchall()

    orders = {
        names[r[0]]: r[1:]
        for r in rows(
            "SELECT id, status, filled_qty, filled_value, filled_avg_price, reserved_cash, "
            "reserved_qty, version, submitted_at, filled_at, canceled_at, replaced_at "
            "FROM orders WHERE account_id = %s"
        )
    }
    events = []
    for (payload,) in rows(
        "SELECT payload::text FROM account_events WHERE account_id = %s ORDER BY seq"
    ):
        p = orjson.loads(payload)
        order = p.pop("order")
        p.pop("execution_id", None)
        events.append((names[UUID(order["id"])], order["status"], order["version"], p))
    return {
        "cash": rows("SELECT cash, reserved_cash, event_seq FROM accounts WHERE id = %s"),
        "orders": orders,
        "positions": rows(
            "SELECT symbol, qty, reserved_qty, cost_basis FROM positions "
            "WHERE account_id = %s ORDER BY symbol"
        ),
        "lots": rows(
            "SELECT symbol, opened_at, qty, remaining_qty, price FROM tax_lots "
            "WHERE account_id = %s ORDER BY opened_at, symbol, qty"
        ),
        "closures": rows(
            "SELECT c.symbol, l.opened_at, c.qty, c.proceeds, c.cost_basis, c.realized_pnl "
            "FROM lot_closures c JOIN tax_lots l ON l.id = c.lot_id "
            "WHERE c.account_id = %s ORDER BY c.closed_at, l.opened_at, c.symbol, c.qty"
        ),
        "executions": rows(
            "SELECT symbol, side, qty, price, executed_at FROM executions "
            "WHERE account_id = %s ORDER BY executed_at, symbol, qty, price"
        ),
        "events": events,
    }


def _fresh_ids(events: list[dict]) -> list[dict]:
    """The same answers under new event ids (a redelivery keeps its copy's new id)."""
    ids: dict[str, str] = {}
    out = []
    for e in events:
        new = ids.setdefault(e["event_id"], f"{e['kind']}:{uuid.uuid4()}")
        out.append({**e, "event_id": new, **({"exec_id": new} if "exec_id" in e else {})})
    return out


def test_a_batch_leaves_what_the_same_events_one_at_a_time_leave(env):
    one, events, names_one = _scenario(env)
    many, _, names_many = _scenario(env)
    # the same answers for the second account's orders (ids mapped by name)
    by_name = {name: oid for oid, name in names_many.items()}

    def mapped(e: dict) -> dict:
        out = dict(e)
        for field in ("order_id", "replaced_by"):
            if field in e and UUID(e[field]) in names_one:
                out[field] = str(by_name[names_one[UUID(e[field])]])
        return out

    alone = [env.ledger.apply(e) for e in events]
    batch_events = _fresh_ids([mapped(e) for e in events])
    together = env.ledger.apply_batch(batch_events)

    outcomes = [r.outcome for r in together]
    assert outcomes == [r.outcome for r in alone]
    assert outcomes == [
        "applied",
        "anomaly",
        "applied",
        "duplicate",
        "anomaly",
        "anomaly",
        "anomaly",
        "applied",
        "applied",
        "applied",
        "anomaly",
        "applied",
        "applied",
        "applied",
    ]
    assert _state(env, one, names_one) == _state(env, many, names_many)
    # the account events each answer returned are the ones it logged, in order
    seqs = [e.seq for r in together for e in r.events]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    assert all(e.account_id == many for r in together for e in r.events)
    for acc in (one, many):
        check_invariants(env.pool, acc)
    with env.pool.connection() as conn:
        n = conn.execute(
            "SELECT count(*) FROM ledger_anomalies WHERE event_id = ANY(%s)",
            ([e["event_id"] for e in batch_events],),
        ).fetchone()
        # a refused first buy leaves no empty position behind
        btb = conn.execute(
            "SELECT count(*) FROM positions WHERE account_id = %s AND symbol = 'BTB'", (many,)
        ).fetchone()
    assert n == (5,) and btb == (0,)


def test_a_refusal_after_part_of_an_answer_applied_leaves_nothing_of_it(env, monkeypatch):
    """A fill refused after it changed the book (here: made to fail at its end) is
    taken back whole; the answers around it in the batch apply."""
    account = env.new_account("10000")
    a = _place(env, account, "BTD", Side.BUY, "10", "100.00")
    b = _place(env, account, "BTE", Side.BUY, "10", "100.00")
    bad = _fill(b.id, "3", "99.00", 2)
    real = ledger_batch.record_fill

    def failing(book, order, event, at):
        got = real(book, order, event, at)
        if event["event_id"] == bad["event_id"]:
            raise FillRefused("refused after applying (test)")
        return got

    monkeypatch.setattr(ledger_batch, "record_fill", failing)
    results = env.ledger.apply_batch(
        [_fill(a.id, "4", "99.00", 1), bad, _event("canceled", b.id, 3)]
    )
    assert [r.outcome for r in results] == ["applied", "anomaly", "applied"]
    o = env.ledger.get(account, b.id)
    assert (o.status, o.filled_qty, o.reserved_cash) == ("canceled", 0, 0)
    with env.pool.connection() as conn:
        left = conn.execute(
            "SELECT (SELECT count(*) FROM executions WHERE order_id = %(b)s), "
            "(SELECT count(*) FROM tax_lots WHERE account_id = %(a)s AND symbol = 'BTE'), "
            "(SELECT count(*) FROM positions WHERE account_id = %(a)s AND symbol = 'BTE')",
            {"a": account, "b": b.id},
        ).fetchone()
    assert left == (0, 0, 0)
    bal = env.ledger.balance(account)
    # the good fill: 4 x 99 paid, its order still reserves 6 x 100
    assert (bal.cash, bal.reserved_cash) == (D("9604.0000"), D("600.0000"))
    check_invariants(env.pool, account)


def test_the_book_undoes_one_answer_exactly():
    book = Book(None, None)  # type: ignore[arg-type]
    account = uuid.uuid4()
    book.accounts[account] = (D(1), D(2))
    mark = book.mark()
    book.add_cash(account, D(5), D(-1))
    book.add_cash(uuid.uuid4(), D(1), D(0))
    book.executions.append(("x",))
    book.note(account, "fill")
    book.undo(mark)
    assert book.accounts == {account: (D(1), D(2))}
    assert book.executions == [] and book.notes == []


def test_fill_batches_racing_placed_orders_on_the_same_positions_keep_the_invariants(
    env, monkeypatch
):
    """The ledger flow applies one batch at a time per account (lanes and partitions go
    by account) while the API places orders on the same positions. The batch locks
    orders and lots, then the account, then positions in key order; placement locks the
    account, then positions in key order: no deadlock, nothing lost, every invariant.
    Two accounts, two symbols each, fills of buys and sells in every batch."""
    monkeypatch.setattr(order_batch, "DEADLOCK_RETRIES", 1)  # a deadlock fails the test
    threads = 12
    accounts = [env.new_account("500000") for _ in range(2)]
    symbols = ("BRA", "BRB")
    fills: dict[UUID, list[dict]] = {}
    bought: dict[tuple[UUID, str], D] = {}
    for acc in accounts:
        for sym in symbols:
            held = _place(env, acc, sym, Side.BUY, "200", "100.00")
            assert env.ledger.apply(_fill(held.id, "200", "100.00", 1)).outcome == "applied"
            bought[(acc, sym)] = D(200)
        queue = []
        for i in range(48):
            sym, side = symbols[i % 2], (Side.BUY, Side.SELL)[(i // 2) % 2]
            qty = str(1 + i % 3)
            order = _place(env, acc, sym, side, qty, "100.00")
            queue.append(_fill(order.id, qty, "100.00", 10 + i))
            bought[(acc, sym)] += D(qty) if side is Side.BUY else -D(qty)
        fills[acc] = queue
    barrier = threading.Barrier(len(accounts) + threads)
    errors: list[BaseException] = []
    outcomes: list[str] = []
    placed: list[tuple[UUID, str, Side, D]] = []

    def apply_fills(acc: UUID) -> None:
        barrier.wait()
        queue = fills[acc]
        for start in range(0, len(queue), 6):  # one batch at a time, as the flow's lane does
            outcomes.extend(r.outcome for r in env.ledger.apply_batch(queue[start : start + 6]))

    def place_orders(t: int) -> None:
        barrier.wait()
        for i in range(6):  # batches of both accounts, buys and sells, as the API sends
            items = []
            for j in range(4):
                acc, sym = accounts[(t + j) % 2], symbols[(t + i + j // 2) % 2]
                side = (Side.SELL, Side.BUY)[(t + i + j) % 3 == 0]
                qty = D(1 + (i + j) % 4)
                req = OrderRequest(
                    sym, side, OrderType.LIMIT, TimeInForce.DAY, qty=qty, limit_price=D(99)
                )
                items.append(NewOrder(acc, req, place(req, market())))
            with env.pool.connection() as conn:
                outcomes_ = place_batch(conn, items, env.ledger.topics.orders)
            for it, out in zip(items, outcomes_, strict=True):
                if isinstance(out, Exception):
                    raise out
                r = it.request
                placed.append((it.account_id, r.symbol, Side(r.side), r.qty))

    def guarded(fn, arg) -> None:
        try:
            fn(arg)
        except BaseException as exc:  # a deadlock or a refused write fails the test below
            errors.append(exc)

    workers = [threading.Thread(target=guarded, args=(apply_fills, a)) for a in accounts]
    workers += [threading.Thread(target=guarded, args=(place_orders, t)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not errors, errors
    assert outcomes == ["applied"] * sum(len(q) for q in fills.values())
    assert any(side is Side.SELL for _, _, side, _ in placed), "no sell placed during the race"
    with env.pool.connection() as conn:
        rows = conn.execute(
            "SELECT account_id, symbol, qty, reserved_qty FROM positions"
            " WHERE account_id = ANY(%s)",
            (accounts,),
        ).fetchall()
    held = {(acc, sym): qty for acc, sym, qty, _ in rows}
    assert held == bought
    for acc, sym, qty, reserved in rows:
        sells = sum(q for a, s, side, q in placed if (a, s, side) == (acc, sym, Side.SELL))
        assert reserved == sells <= qty  # the placed sells still hold their shares
    for acc in accounts:
        check_invariants(env.pool, acc)


def _waiting_on_locks(env) -> int:
    with env.pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def test_cancel_all_and_a_fill_batch_lock_orders_in_the_same_order(env):
    """DELETE /v1/orders (Ledger.cancel_all) locks every open order of the account; the
    ledger flow's batch locks the orders its fills name, in id order. Were cancel-all to
    lock by age, the two could each hold an order the other waits for: a deadlock, and
    the user's cancel-all answered 500. Made to happen, not left to timing: a third
    transaction holds the second-oldest order, so cancel-all stops after locking the
    oldest, and the fill batch then locks (by id) up to the oldest; the holder lets go."""
    for _ in range(20):  # until an order younger than the two oldest has a smaller id
        account = env.new_account("1000000")
        orders = [_place(env, account, "BRC", Side.BUY, "2", "100.00") for _ in range(8)]
        if min(o.id for o in orders[2:]) < orders[0].id:
            break
    else:
        pytest.fail("ids never disagreed with age")
    fills = [_fill(o.id, "1", "100.00", i) for i, o in enumerate(orders)]
    errors: list[BaseException] = []

    def run(fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as exc:
            errors.append(exc)

    cancel = threading.Thread(target=run, args=(env.ledger.cancel_all, account))
    apply = threading.Thread(target=run, args=(env.ledger.apply_batch, fills))
    with env.pool.connection() as holder, holder.transaction():
        holder.execute("SELECT 1 FROM orders WHERE id = %s FOR UPDATE", (orders[1].id,))
        cancel.start()
        until(lambda: _waiting_on_locks(env) >= 1, timeout=10)
        apply.start()
        until(lambda: _waiting_on_locks(env) >= 2, timeout=10)
    for t in (cancel, apply):
        t.join(30)
    assert not errors, errors
    assert all(env.ledger.get(account, o.id).filled_qty == 1 for o in orders)
    check_invariants(env.pool, account)
