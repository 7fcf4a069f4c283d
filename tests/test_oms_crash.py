"""Issue 5's crash test: `tapeflow run` (API, relay, execution and ledger flows) is
SIGKILLed at seeded random moments while a feed moves prices and clients place, cancel
and replace orders; afterwards every invariant of DESIGN.md section 3 holds.

Checked on the final state, for every account of the test:
1. every order the API acknowledged is in PostgreSQL, and none was executed twice
   (execution ids are unique; an order's filled_qty is the sum of its executions);
2. each execution changed the ledger once: the position is the sum of the account's
   fills, cash is the deposits minus what the buys cost plus what the sells brought
   (per fill, rounded to 4 places), no order filled beyond its quantity;
3. cash, buying power and shares are never negative; reserved cash and shares equal
   what the open orders reserve (tests/ledger_support.check_invariants);
5. and 6. (money is NUMERIC to 4 and 6 places, timestamps are UTC) are the schema's:
tests/test_migrations.py checks every column; 4. (candles whatever the restarts) is
tests/test_e2e_pipeline.py's.
TAPEFLOW_CRASH_SEED picks the kill moments and the order mix.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import httpx
import pytest
from confluent_kafka import Producer

from infra import db
from infra.ledger import Ledger
from infra.quote_store import QuoteStore
from schemas.marketdata import Security
from tests.conftest import Pipeline, new_user
from tests.ledger_support import check_invariants

pytestmark = pytest.mark.services
SESSION = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)  # 10:00 New York
SYMBOLS = ("CRA", "CRB", "CRC")
SEED = int(os.environ.get("TAPEFLOW_CRASH_SEED", "20261125"))
RUN_S = 35.0
ACCOUNTS = 3


class Feed(threading.Thread):
    """Venue quotes (and now and then a trade) on a random walk, in session time."""

    def __init__(self, p: Pipeline, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.producer = Producer({"bootstrap.servers": p.settings.bootstrap, "linger.ms": 5})
        self.topic = p.topics.raw("nasdaq")
        self.rng, self.stop = rng, threading.Event()
        self.mid = dict.fromkeys(SYMBOLS, 50.0)

    def run(self) -> None:
        t0, n = time.monotonic(), 0
        while not self.stop.is_set():
            symbol = SYMBOLS[n % len(SYMBOLS)]
            self.mid[symbol] = max(5.0, self.mid[symbol] + self.rng.uniform(-0.05, 0.05))
            mid = self.mid[symbol]
            at = SESSION + timedelta(seconds=time.monotonic() - t0)
            stamp = at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"
            line = (
                f'{{"T":"q","S":"{symbol}","bx":"Q","bp":"{mid - 0.01:.2f}","bs":300,'
                f'"ax":"Q","ap":"{mid + 0.01:.2f}","as":300,"t":"{stamp}"}}'
            )
            self.producer.produce(self.topic, key=symbol.encode(), value=line.encode())
            if n % 7 == 0:
                trade = (
                    f'{{"T":"t","S":"{symbol}","i":"{n}","x":"Q","p":"{mid:.2f}","s":100,'
                    f'"t":"{stamp}","c":["@"]}}'
                )
                self.producer.produce(self.topic, key=symbol.encode(), value=trade.encode())
            self.producer.poll(0)
            n += 1
            time.sleep(0.02)
        self.producer.flush(10)


class Trader(threading.Thread):
    """Places, cancels and replaces orders for one account; retries through restarts."""

    def __init__(self, p: Pipeline, token: str, rng: random.Random, feed: Feed) -> None:
        super().__init__(daemon=True)
        self.p, self.rng, self.feed = p, rng, feed
        self.headers = {"Authorization": f"Bearer {token}"}
        self.stop = threading.Event()
        self.acknowledged: set[str] = set()
        self.open: list[str] = []

    def call(self, method: str, path: str, **kw) -> httpx.Response | None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                return httpx.request(
                    method,
                    f"{self.p.url}{path}",
                    headers=kw.pop("headers", self.headers),
                    timeout=10,
                    **kw,
                )
            except httpx.TransportError:
                time.sleep(0.3)  # the pipeline is restarting
        return None

    def order(self, body: dict) -> None:
        key = {"Idempotency-Key": uuid.uuid4().hex, **self.headers}
        r = self.call("POST", "/v1/orders", json=body, headers=key)
        if r is not None and r.status_code == 200:
            self.acknowledged.add(r.json()["id"])
            self.open.append(r.json()["id"])

    def run(self) -> None:
        while not self.stop.is_set():
            symbol = self.rng.choice(SYMBOLS)
            mid = self.feed.mid[symbol]
            roll = self.rng.random()
            if roll < 0.35:
                self.order(
                    {
                        "symbol": symbol,
                        "side": "buy",
                        "type": "market",
                        "time_in_force": "day",
                        "qty": str(self.rng.randint(1, 3)),
                    }
                )
            elif roll < 0.55:
                price = f"{mid + self.rng.uniform(-0.1, 0.1):.2f}"
                self.order(
                    {
                        "symbol": symbol,
                        "side": "buy",
                        "type": "limit",
                        "time_in_force": self.rng.choice(["day", "gtc", "ioc"]),
                        "qty": str(self.rng.randint(1, 4)),
                        "limit_price": price,
                    }
                )
            elif roll < 0.75:
                self.order(
                    {
                        "symbol": symbol,
                        "side": "sell",
                        "type": self.rng.choice(["market", "limit"]),
                        "time_in_force": "day",
                        "qty": "1",
                        **(
                            {}
                            if self.rng.random() < 0.5
                            else {"type": "limit", "limit_price": f"{mid - 0.02:.2f}"}
                        ),
                    }
                )
            elif roll < 0.82:
                self.order(
                    {
                        "symbol": symbol,
                        "side": "sell",
                        "type": "stop",
                        "time_in_force": "gtc",
                        "qty": "1",
                        "stop_price": f"{mid - 0.03:.2f}",
                    }
                )
            elif roll < 0.93 and self.open:
                self.call("DELETE", f"/v1/orders/{self.rng.choice(self.open)}")
            elif self.open:
                target = self.rng.choice(self.open)
                r = self.call(
                    "PATCH", f"/v1/orders/{target}", json={"limit_price": f"{mid - 0.05:.2f}"}
                )
                if r is not None and r.status_code == 200:
                    self.acknowledged.add(r.json()["id"])
            time.sleep(self.rng.uniform(0.02, 0.08))


def _money(v: Decimal) -> Decimal:
    return v.quantize(Decimal("0.0001"), ROUND_HALF_EVEN)


def _check_account(pool, account_id, acknowledged: set[str]) -> dict:
    state = check_invariants(pool, account_id)
    with pool.connection() as conn:
        orders = {
            str(i): (q, f)
            for i, q, f in conn.execute(
                "SELECT id, qty, filled_qty FROM orders WHERE account_id = %s", (account_id,)
            ).fetchall()
        }
        execs = conn.execute(
            "SELECT id, order_id, side, symbol, qty, price FROM executions WHERE account_id = %s",
            (account_id,),
        ).fetchall()
        deposits = conn.execute(
            "SELECT COALESCE(sum(amount), 0) FROM cash_transfers WHERE account_id = %s",
            (account_id,),
        ).fetchone()[0]
        positions = dict(
            conn.execute(
                "SELECT symbol, qty FROM positions WHERE account_id = %s", (account_id,)
            ).fetchall()
        )
        cash = conn.execute("SELECT cash FROM accounts WHERE id = %s", (account_id,)).fetchone()[0]
    # 1. acknowledged orders are all there; none executed twice
    missing = acknowledged - set(orders)
    assert not missing, f"acknowledged orders lost: {sorted(missing)[:5]}"
    assert len({e[0] for e in execs}) == len(execs)
    by_order: dict[str, Decimal] = {}
    for _, order_id, _, _, qty, _ in execs:
        by_order[str(order_id)] = by_order.get(str(order_id), Decimal(0)) + qty
    for order_id, (qty, filled) in orders.items():
        assert filled == by_order.get(order_id, 0), f"order {order_id}: filled {filled}"
        assert qty is None or filled <= qty
    # 2. positions and cash are the sums of the fills
    held: dict[str, Decimal] = {}
    expected_cash = deposits
    for _, _, side, symbol, qty, price in execs:
        sign = 1 if side == "buy" else -1
        held[symbol] = held.get(symbol, Decimal(0)) + sign * qty
        expected_cash -= sign * _money(qty * price)
    for symbol in set(held) | set(positions):
        assert positions.get(symbol, 0) == held.get(symbol, 0), symbol
    assert cash == expected_cash
    return {**state, "order_count": len(orders), "executions": len(execs)}


def test_sigkill_during_order_flow_keeps_every_invariant(services, pipeline: Pipeline):
    rng = random.Random(SEED)
    pipeline.env["TAPEFLOW_CLOCK_START"] = SESSION.isoformat().replace("+00:00", "Z")
    QuoteStore(pipeline.settings.redis).apply(
        [Security(s, "iex", 100, False, 1, 1) for s in SYMBOLS]
    )
    pool = db.pool(services.postgres)
    ledger = Ledger(pool, pipeline.topics)
    users = [new_user(services, rate_limit=100_000) for _ in range(ACCOUNTS)]
    for _, account, _ in users:
        ledger.deposit(account.id, Decimal("20000"))
    pipeline.start()
    feed = Feed(pipeline, random.Random(SEED + 1))
    feed.start()
    deadline = time.monotonic() + 30
    while not all(pipeline.get(f"/v1/quotes/{s}").status_code == 200 for s in SYMBOLS):
        assert time.monotonic() < deadline, "the feed's quotes never reached the API"
        time.sleep(0.3)
    traders = [
        Trader(pipeline, token, random.Random(SEED + 10 + n), feed)
        for n, (_, _, token) in enumerate(users)
    ]
    for t in traders:
        t.start()
    kills = 0
    end = time.monotonic() + RUN_S
    while time.monotonic() < end:
        time.sleep(rng.uniform(3.0, 8.0))
        pipeline.kill()
        kills += 1
        pipeline.start()
    for t in traders:
        t.stop.set()
    for t in traders:
        t.join(timeout=90)
    # Settle: no kills; the flows catch up on what was in flight.
    time.sleep(15)
    feed.stop.set()
    for (_, account, _), trader in zip(users, traders, strict=True):
        settled_by = time.monotonic() + 60
        while True:
            with pool.connection() as conn:
                pending = conn.execute(
                    "SELECT count(*) FROM orders WHERE account_id = %s AND status IN "
                    "('pending_new', 'pending_cancel', 'pending_replace')",
                    (account.id,),
                ).fetchone()[0]
            if not pending or time.monotonic() > settled_by:
                break
            time.sleep(1)
        assert pending == 0, f"{pending} orders never answered by the execution side"
        got = _check_account(pool, account.id, trader.acknowledged)
        print(f"account {account.id}: {got['order_count']} orders, {got['executions']} fills")
    assert kills >= 3
    assert sum(len(t.acknowledged) for t in traders) > 30, "too little order flow to matter"
    with pool.connection() as conn:
        refused = conn.execute(
            "SELECT a.kind, a.reason FROM ledger_anomalies a JOIN orders o ON o.id = a.order_id "
            "WHERE o.account_id = ANY(%s)",
            ([a.id for _, a, _ in users],),
        ).fetchall()
    # Not applied, kept for reconciliation: after a restart a desk may decide an order at
    # another moment of the market than before the crash (orders and quotes come on two
    # topics), e.g. fill an IOC the ledger already saw canceled. The ledger refuses what
    # contradicts it, which is what keeps the checks above true.
    print(f"{kills} kills; anomalies recorded: {refused}")
