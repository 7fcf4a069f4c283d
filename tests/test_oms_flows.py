"""The execution and ledger flows: their batch steps, then the whole loop on the real
services (PostgreSQL ledger -> oms.orders -> execution flow -> oms.executions -> ledger
flow -> PostgreSQL), including SIGKILL and a replay from the start of both topics.

Nothing here relays the outbox (another component does): `relay` below publishes the
rows to oms.orders by hand, exactly as schemas/oms.py specifies.
"""

from __future__ import annotations

import inspect
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal as D
from uuid import UUID

import orjson
import psycopg
import pytest
from confluent_kafka import Producer

from flows.execution import CLOCK, ORDER, key_by_symbol, run_desk
from flows.ledger import _LedgerPartition, decode_batch
from infra import accounts, cli, db
from infra.ledger import Applied, Ledger
from infra.outbox import lock_key
from infra.runner import FLOWS
from schemas.execution import SymbolDesk
from schemas.marketdata import Quote, to_wire
from schemas.oms import encode
from schemas.orders import MarketView, OrderRequest, OrderType, Side, TimeInForce, place
from schemas.sessions import market_session
from tests.conftest import Pipeline
from tests.e2e_support import eventually

NS = 1_000_000_000
REGULAR = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)  # 11:00 New York
PRE_MARKET = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)  # 07:00 New York


# -- the flows' batch steps (no services) ------------------------------------------------


def test_key_by_symbol_keeps_order_messages_in_order_and_folds_feed_times():
    orders = "ns.oms.orders"
    new = {"event_id": "o:1", "kind": "new", "at": 1, "order": {"symbol": "AAPL"}}
    cancel = {"event_id": "o:2", "kind": "cancel", "at": 2, "symbol": "AAPL"}
    quote = orjson.dumps({"kind": "quote", "symbol": "AAPL", "event_ns": 50})
    batch = [
        ("ns.md.quotes", b"AAPL", orjson.dumps({"event_ns": 40})),
        ("ns.md.trades", b"AAPL", quote),
        ("ns.md.quotes", b"AAPL", orjson.dumps({"event_ns": 45})),  # late: max kept
        (orders, b"AAPL", encode(new)),
        ("ns.md.quotes", b"MSFT", orjson.dumps({"event_ns": 60})),
        (orders, None, encode(cancel)),  # no key: the symbol from the message
        ("ns.md.quotes", None, orjson.dumps({"event_ns": 70})),  # system event: no symbol
        ("ns.md.quotes", b"AAPL", b"not json"),
        (orders, b"AAPL", b"not json"),
    ]
    assert key_by_symbol(batch, orders) == [
        ("AAPL", ("AAPL", [(CLOCK, 50), (ORDER, new), (ORDER, cancel)])),
        ("MSFT", ("MSFT", [(CLOCK, 60)])),
    ]


def test_run_desk_keys_answers_by_account_and_survives_a_bad_message():
    account = str(uuid.uuid4())
    cancel = {
        "event_id": "o:9",
        "kind": "cancel",
        "at": 5,
        "order_id": str(uuid.uuid4()),
        "account_id": account,
        "symbol": "AAPL",
    }
    desk, out = run_desk(None, ("AAPL", [(ORDER, {"kind": "cancel"}), (ORDER, cancel)]), "x")
    assert isinstance(desk, SymbolDesk) and desk.symbol == "AAPL"
    ((topic, key, value, headers),) = out
    assert (topic, key, headers) == ("x", account.encode(), None)
    assert orjson.loads(value)["event_id"] == "cancel_rejected:o:9"


def test_decode_batch_drops_what_it_cannot_read():
    good = {"event_id": "a:o:1", "kind": "acknowledged", "at": 1, "order_id": "x"}
    msgs = [
        ("t", b"k", b"{"),
        ("t", b"k", orjson.dumps({"kind": "fill"})),
        ("t", b"k", encode(good)),
    ]
    assert decode_batch(msgs) == [[good]]
    assert decode_batch(msgs[:2]) == []


class _FakeLedger:
    def __init__(self, outcome: Exception | Applied) -> None:
        self.outcome, self.seen = outcome, []

    def apply(self, event: dict) -> Applied:
        self.seen.append(event["event_id"])
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome

    def apply_batch(self, events: list[dict]) -> list[Applied]:
        """One transaction: a failure undoes the whole batch (nothing seen)."""
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return [self.apply(e) for e in events]


def _partition(ledger: _FakeLedger) -> _LedgerPartition:
    part = _LedgerPartition.__new__(_LedgerPartition)
    part.ledger = ledger  # type: ignore[assignment]
    return part


def test_the_ledger_sink_applies_in_order_and_skips_what_can_never_apply(caplog):
    events = [{"event_id": f"e{i}"} for i in range(3)]
    fake = _FakeLedger(Applied("e", "anomaly", "illegal"))
    _partition(fake).write_batch([events[:2], events[2:]])
    assert fake.seen == ["e0", "e1", "e2"]
    assert "anomaly" in caplog.text
    # an order the ledger does not have: logged, skipped, the flow goes on
    missing = _FakeLedger(psycopg.errors.ForeignKeyViolation("no such order"))
    _partition(missing).write_batch([events])
    assert missing.seen == ["e0", "e1", "e2"]
    # the database gone: the flow stops (and resumes from its snapshot when restarted)
    down = _FakeLedger(psycopg.OperationalError("connection refused"))
    with pytest.raises(psycopg.OperationalError):
        _partition(down).write_batch([events])


def test_tapeflow_run_hosts_the_order_flows_by_default():
    assert {"execution", "ledger"} <= set(FLOWS)
    assert inspect.signature(cli.run).parameters["flows"].default == ",".join(FLOWS)


# -- the loop on the real services -------------------------------------------------------


def market(now: datetime = REGULAR) -> MarketView:
    return MarketView(
        now, market_session(now), tradable=True, halted=False, bid=D("99.99"), ask=D("100.01")
    )


def limit_buy(qty: str, price: str, symbol: str = "AAPL") -> OrderRequest:
    return OrderRequest(
        symbol, Side.BUY, OrderType.LIMIT, TimeInForce.DAY, qty=D(qty), limit_price=D(price)
    )


class Loop:
    """A ledger on the test database writing the pipeline's outbox rows, and either the
    pipeline's own outbox relay (the one `tapeflow run` hosts) or, with `hand_relay`, this
    test as the relay: it then holds the relay's advisory lock, so the pipeline's relay
    waits (as a second relay does), and publishes the rows itself when told to."""

    def __init__(self, p: Pipeline, *, hand_relay: bool) -> None:
        self.p = p
        self.lock: psycopg.Connection | None = None
        if hand_relay:  # before the pipeline starts, so its relay never gets the lock
            self.lock = psycopg.connect(p.settings.postgres, autocommit=True)
            self.lock.execute("SELECT pg_advisory_lock(%s)", (lock_key([p.topics.orders]),))
        self.pool = db.pool(p.settings.postgres)
        self.ledger = Ledger(self.pool, p.topics)
        self.producer = Producer({"bootstrap.servers": p.settings.bootstrap, "acks": "all"})
        _, acct = accounts.create_user(self.pool, f"x{uuid.uuid4().hex[:12]}@test.local", "OMS")
        self.account = acct.id
        self.ledger.deposit(self.account, D("100000"))
        self.sent: list[tuple[str, bytes]] = []

    def place(self, qty: str, price: str, now: datetime = REGULAR) -> UUID:
        order = self.ledger.place(
            self.account, limit_buy(qty, price), place(limit_buy(qty, price), market(now))
        )
        return order.id  # type: ignore[union-attr]

    def replace(self, order_id: UUID, qty: str, price: str) -> UUID:
        req = limit_buy(qty, price)
        return self.ledger.request_replace(
            self.account, order_id, lambda old: (req, place(req, market()), None)
        ).id

    def close(self) -> None:
        if self.lock is not None:
            self.lock.close()

    def relay(self, edit: Callable[[dict], None] | None = None) -> None:
        """Claim this pipeline's unsent outbox rows and publish them in id order, each with
        `"event_id": "o:<outbox id>"` spliced in first and the symbol as key (schemas/oms.py).
        Without a hand relay the pipeline's relay does this by itself."""
        if self.lock is None:
            return
        with self.pool.connection() as conn:
            rows = conn.execute(
                "UPDATE outbox SET sent_at = now() WHERE topic = %s AND sent_at IS NULL "
                "RETURNING id, key, payload",
                (self.p.topics.orders,),
            ).fetchall()
        for oid, key, payload in sorted(rows):
            value = b'{"event_id":"o:%d",%s' % (oid, bytes(payload)[1:])
            if edit is not None:
                msg = orjson.loads(value)
                edit(msg)
                value = orjson.dumps(msg)
            self.publish(key, value)
        self.producer.flush(10)

    def publish(self, key: str, value: bytes) -> None:
        self.producer.produce(self.p.topics.orders, value, key.encode())
        self.sent.append((key, value))

    def quote_at(self, at: datetime, symbol: str = "AAPL") -> None:
        ns = int(at.timestamp()) * NS
        q = Quote(symbol, "iex", D("99.99"), 100, D("100.01"), 100, ns, ns)
        self.producer.produce(self.p.topics.quotes, to_wire(q), symbol.encode())
        self.producer.flush(10)

    def order(self, order_id: UUID) -> dict:
        with self.pool.connection() as conn:
            cur = conn.execute("SELECT * FROM orders WHERE id = %s", (order_id,))
            names = [c.name for c in cur.description]
            return dict(zip(names, cur.fetchone(), strict=True))

    def reserved(self) -> D:
        return self.ledger.balance(self.account).reserved_cash

    def wait(self, order_id: UUID, status: str, timeout_s: float = 60) -> dict:
        row = eventually(
            lambda: self.order(order_id), lambda o: o["status"] == status, timeout_s=timeout_s
        )
        assert row["status"] == status, (
            f"order {order_id} is {row['status']}, not {status}; anomalies "
            f"{self.anomalies()}; log:\n{self.p.log.read_text()[-3000:]}"
        )
        return row

    def state(self) -> tuple:
        """Everything the loop may change for this account: orders (with versions and
        update times), the account's balances, the applied event ids."""
        with self.pool.connection() as conn:
            cur = conn.execute(
                "SELECT * FROM orders WHERE account_id = %s ORDER BY id", (self.account,)
            )
            names = [c.name for c in cur.description]
            orders = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
            account = conn.execute(
                "SELECT cash, reserved_cash, updated_at FROM accounts WHERE id = %s",
                (self.account,),
            ).fetchone()
            applied = conn.execute(
                "SELECT e.id, e.order_id, e.applied_at FROM applied_events e JOIN orders o "
                "ON o.id = e.order_id WHERE o.account_id = %s ORDER BY e.id",
                (self.account,),
            ).fetchall()
        return orders, account, applied

    def anomalies(self) -> list:
        with self.pool.connection() as conn:
            return conn.execute(
                "SELECT a.event_id, a.kind, a.reason FROM ledger_anomalies a JOIN orders o "
                "ON o.id = a.order_id WHERE o.account_id = %s",
                (self.account,),
            ).fetchall()


def restart(p: Pipeline, *, forget: tuple[str, ...] = ()) -> None:
    """SIGKILL the pipeline, optionally drop flows' recovery (they then read their topics
    from the start), and start it again."""
    p.kill()
    for name in forget:
        shutil.rmtree(p.settings.home / "recovery" / name)
    p.start()


@pytest.mark.services
def test_orders_cancels_and_replaces_round_trip_exactly_once(pipeline: Pipeline):
    loop = Loop(pipeline, hand_relay=True)  # it edits a message on its way
    pipeline.start()
    try:
        round_trip(pipeline, loop)
    finally:
        loop.close()


def round_trip(pipeline: Pipeline, loop: Loop) -> None:

    # new: pending_new -> new, acknowledged at the message's time
    a = loop.place("10", "100.00")
    assert loop.order(a)["status"] == "pending_new" and loop.reserved() == D("1000")
    loop.relay()
    row = loop.wait(a, "new")
    assert row["submitted_at"] is not None

    # cancel: pending_cancel -> canceled, the reservation released
    loop.ledger.request_cancel(loop.account, a)
    loop.relay()
    row = loop.wait(a, "canceled")
    assert row["reserved_cash"] == 0 and row["canceled_at"] is not None
    assert loop.reserved() == 0

    # replace up: the new order reserves its full amount, the old one nothing
    b = loop.place("10", "100.00")
    loop.relay()
    loop.wait(b, "new")
    b2 = loop.replace(b, "20", "100.00")
    assert loop.reserved() == D("2000")  # the old 1,000 and the extra 1,000
    loop.relay()
    old, new = loop.wait(b, "replaced"), loop.wait(b2, "new")
    assert old["replaced_by"] == b2 and new["replaces"] == b and old["replaced_at"] is not None
    assert (old["reserved_cash"], new["reserved_cash"], loop.reserved()) == (0, 2000, 2000)

    # replace down: the excess goes back
    b3 = loop.replace(b2, "5", "100.00")
    loop.relay()
    loop.wait(b2, "replaced")
    assert loop.wait(b3, "new")["reserved_cash"] == 500 and loop.reserved() == D("500")

    # a replace whose expected filled quantity is stale at the execution side (a fill
    # the ledger had not seen yet): rejected, the old order works on, the new one is
    # rejected and its extra reservation released
    c = loop.place("10", "50.00")
    loop.relay()
    loop.wait(c, "new")
    c2 = loop.replace(c, "30", "50.00")
    assert loop.reserved() == D("2000")  # b3 500, c 500, c2's extra 1,000
    loop.relay(edit=lambda msg: msg.update(expected_filled_qty="1"))
    rejected = loop.wait(c2, "rejected")
    assert rejected["reject_reason"].startswith("filled_qty_changed")
    assert rejected["reserved_cash"] == 0
    assert loop.wait(c, "new")["replaced_by"] == c2  # the link of the refused attempt stays
    assert loop.reserved() == D("1000")
    assert loop.anomalies() == []
    before = loop.state()

    # SIGKILL and restart: whatever the flows repeat from their last snapshots changes
    # nothing, and neither does a message delivered twice
    restart(pipeline)
    loop.publish(*loop.sent[1])  # the cancel of `a` again
    loop.producer.flush(10)
    d = loop.place("1", "10.00")  # a barrier: same symbol and account, so same partitions
    loop.relay()
    loop.wait(d, "new")
    after = loop.state()
    assert without(after, d) == without(before)
    assert loop.anomalies() == []

    # both flows forget their recovery and read their topics from the start: every
    # answer comes again, with the same ids, and the ledger does not move
    restart(pipeline, forget=("execution", "ledger"))
    e = loop.place("1", "10.00")
    loop.relay()
    loop.wait(e, "new")
    assert without(loop.state(), d, e) == without(before)
    assert loop.anomalies() == []


@pytest.mark.services
def test_held_orders_are_acknowledged_when_the_feed_enters_the_regular_session(
    pipeline: Pipeline,
):
    # the execution and ledger flows in processes of their own, fed by the outbox relay
    # that tapeflow run hosts
    pipeline.start(split=True)
    loop = Loop(pipeline, hand_relay=False)
    held = loop.place("10", "100.00", now=PRE_MARKET)
    gone = loop.place("1", "100.00", now=PRE_MARKET)
    assert loop.order(held)["status"] == "accepted"
    loop.relay()
    loop.quote_at(datetime(2026, 11, 24, 13, 0, tzinfo=UTC))  # 08:00 New York
    # a held order canceled before the open is never acknowledged
    loop.ledger.request_cancel(loop.account, gone)
    loop.relay()
    assert loop.wait(gone, "canceled")["submitted_at"] is None
    assert loop.order(held)["status"] == "accepted"
    loop.quote_at(datetime(2026, 11, 24, 14, 31, tzinfo=UTC))  # 09:31 New York
    row = loop.wait(held, "new")
    assert row["submitted_at"] == datetime(2026, 11, 24, 14, 30, tzinfo=UTC)  # the open
    # the desk's clock is in the session now: a held order works at once, even one
    # whose cancel the ledger took before the execution side saw it (the answer
    # leaves it pending_cancel until the cancel is answered)
    late = loop.place("1", "100.00", now=PRE_MARKET)
    loop.ledger.request_cancel(loop.account, late)
    loop.relay()
    row = loop.wait(late, "canceled")
    assert row["submitted_at"] is not None and row["reserved_cash"] == 0
    assert loop.reserved() == D("1000")
    assert loop.anomalies() == []


def without(state: tuple, *order_ids: UUID) -> tuple:
    """The orders and applied events of `state` but those of `order_ids`; the account's
    cash and what the other orders reserve."""
    orders, (cash, reserved, _), applied = state
    left = [o for o in orders if o["id"] not in order_ids]
    dropped = sum((o["reserved_cash"] for o in orders if o["id"] in order_ids), D(0))
    return left, (cash, reserved - dropped), [e for e in applied if e[1] not in order_ids]
