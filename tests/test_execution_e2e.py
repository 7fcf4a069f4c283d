"""Fills end to end through `tapeflow run`: resting limit buys placed with POST /v1/orders,
then a scripted JSON-lines feed replayed into md.raw.nasdaq; the nasdaq venue's quotes
cross the orders and the fills land in PostgreSQL exactly: executions (price, size,
venue, route), order statuses, the position and cash.

The orders reach their desk before the market data they fill against, so the fills are
the same on every run (README, "The order side": determinism).
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from infra import db
from infra.ledger import Ledger
from infra.quote_store import QuoteStore
from infra.replay import replay
from schemas.marketdata import NBBO_VENUE, Quote, Security
from tests.conftest import Pipeline, new_user
from tests.e2e_support import until

pytestmark = pytest.mark.services
SYMBOL = "XFIL"


def _feed(path: Path) -> Path:
    """nasdaq quotes on 2026-11-24 at 10:00:0x New York (the regular session)."""

    def q(second: int, bid: str, bid_size: int, ask: str, ask_size: int) -> str:
        return (
            f'{{"T":"q","S":"{SYMBOL}","bx":"Q","bp":"{bid}","bs":{bid_size},"ax":"Q",'
            f'"ap":"{ask}","as":{ask_size},"t":"2026-11-24T15:00:{second:02d}Z"}}'
        )

    lines = [
        q(1, "50.10", 100, "50.20", 100),  # above both limits: nothing
        q(2, "49.90", 100, "50.00", 4),  # crosses A (50.00): 4 of 10
        q(3, "49.90", 100, "49.95", 20),  # A's other 6, at the better ask
        '{"T":"t","S":"XFIL","i":"1","x":"Q","p":"49.95","s":6,"t":"2026-11-24T15:00:03.5Z"}',
        q(4, "49.30", 100, "49.40", 3),  # crosses B (49.50): 3 of 5
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_resting_limit_buys_fill_against_a_replayed_feed(services, pipeline: Pipeline, tmp_path):
    pipeline.env["TAPEFLOW_CLOCK_START"] = "2026-11-24T15:00:00Z"  # 10:00 New York
    ns = time.time_ns()
    QuoteStore(pipeline.settings.redis).apply(
        [
            Security(SYMBOL, "nasdaq", 100, False, ns, ns),
            Quote(SYMBOL, NBBO_VENUE, Decimal("50.10"), 100, Decimal("50.20"), 100, ns, ns, ns),
        ]
    )
    _, account, token = new_user(services, rate_limit=10_000)
    pool = db.pool(services.postgres)
    Ledger(pool, pipeline.topics).deposit(account.id, Decimal("10000"))
    pipeline.start()
    api = httpx.Client(
        base_url=pipeline.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )

    def place(qty: str, limit: str) -> str:
        body = {
            "symbol": SYMBOL,
            "side": "buy",
            "type": "limit",
            "time_in_force": "day",
            "qty": qty,
            "limit_price": limit,
        }
        answer = api.post("/v1/orders", json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()["id"]

    def order(order_id: str) -> dict:
        return api.get(f"/v1/orders/{order_id}").json()

    a, b = place("10", "50.00"), place("5", "49.50")
    until(lambda: order(a)["status"] == "new" and order(b)["status"] == "new")

    stats = replay(
        _feed(tmp_path / "feed.jsonl"),
        "nasdaq",
        pipeline.settings.bootstrap,
        speed=None,
        topic=pipeline.topics.raw("nasdaq"),
    )
    assert stats.messages == 5
    until(lambda: order(a)["status"] == "filled" and order(b)["filled_qty"] == "3.000000")

    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT id, order_id::text, side, qty, price, venue, route, executed_at "
            "FROM executions WHERE account_id = %s ORDER BY executed_at, id",
            (account.id,),
        ).fetchall()
        position = conn.execute(
            "SELECT qty, cost_basis, reserved_qty FROM positions "
            "WHERE account_id = %s AND symbol = %s",
            (account.id, SYMBOL),
        ).fetchone()
        cash = conn.execute(
            "SELECT cash, reserved_cash FROM accounts WHERE id = %s", (account.id,)
        ).fetchone()
        anomalies = conn.execute(
            "SELECT count(*) FROM ledger_anomalies WHERE order_id = ANY(%s::uuid[])", ([a, b],)
        ).fetchone()[0]
    assert [(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows] == [
        (f"fill:{a}:1", a, "buy", Decimal("4"), Decimal("50.0000"), "nasdaq", ["nasdaq"]),
        (f"fill:{a}:2", a, "buy", Decimal("6"), Decimal("49.9500"), "nasdaq", ["nasdaq"]),
        (f"fill:{b}:1", b, "buy", Decimal("3"), Decimal("49.4000"), "nasdaq", ["nasdaq"]),
    ]
    # executed at the feed's time of the quote each fill took
    assert [r[7].isoformat() for r in rows] == [
        "2026-11-24T15:00:02+00:00",
        "2026-11-24T15:00:03+00:00",
        "2026-11-24T15:00:04+00:00",
    ]
    assert anomalies == 0

    first, second = order(a), order(b)
    assert (first["status"], first["filled_qty"], first["filled_avg_price"]) == (
        "filled",
        "10.000000",
        "49.9700",  # (4 × 50.00 + 6 × 49.95) / 10
    )
    assert (second["status"], second["filled_qty"], second["filled_avg_price"]) == (
        "partially_filled",
        "3.000000",
        "49.4000",
    )
    cost = Decimal("200.00") + Decimal("299.70") + Decimal("148.20")
    assert position == (Decimal("13"), cost, Decimal("0"))
    # cash spent exactly; B's 2 unfilled shares keep 2 × 49.50 reserved
    assert cash == (Decimal("10000") - cost, Decimal("99.00"))
    account_now = api.get("/v1/account").json()
    assert Decimal(account_now["cash"]) == Decimal("9352.10")
    assert Decimal(account_now["reserved_cash"]) == Decimal("99.00")


def test_a_resting_gtc_order_survives_a_crash_and_fills_after_it(
    services, pipeline: Pipeline, tmp_path
):
    """The desk's open orders live in Bytewax recovery (or are rebuilt from oms.orders
    since the last snapshot): after a SIGKILL the order still fills, exactly once."""
    pipeline.env["TAPEFLOW_CLOCK_START"] = "2026-11-24T15:00:00Z"
    symbol, ns = "XGTC", time.time_ns()
    QuoteStore(pipeline.settings.redis).apply(
        [
            Security(symbol, "nasdaq", 100, False, ns, ns),
            Quote(symbol, NBBO_VENUE, Decimal("20.10"), 100, Decimal("20.20"), 100, ns, ns, ns),
        ]
    )
    _, account, token = new_user(services, rate_limit=10_000)
    pool = db.pool(services.postgres)
    Ledger(pool, pipeline.topics).deposit(account.id, Decimal("1000"))
    pipeline.start()
    api = httpx.Client(
        base_url=pipeline.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    body = {
        "symbol": symbol,
        "side": "buy",
        "type": "limit",
        "time_in_force": "gtc",
        "qty": "5",
        "limit_price": "20.00",
    }
    order_id = api.post("/v1/orders", json=body).json()["id"]
    until(lambda: api.get(f"/v1/orders/{order_id}").json()["status"] == "new")
    time.sleep(2.5)  # most likely in a snapshot by now; either way it is rebuilt
    pipeline.kill()
    pipeline.start()
    api = httpx.Client(
        base_url=pipeline.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    feed = tmp_path / "gtc.jsonl"
    feed.write_text(
        f'{{"T":"q","S":"{symbol}","bp":"19.90","bs":100,"ap":"19.99","as":10,'
        f'"t":"2026-11-24T15:00:01Z"}}\n'
    )
    replay(
        feed, "nasdaq", pipeline.settings.bootstrap, speed=None, topic=pipeline.topics.raw("nasdaq")
    )
    until(lambda: api.get(f"/v1/orders/{order_id}").json()["status"] == "filled")
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT id, qty, price, venue FROM executions WHERE order_id = %s", (order_id,)
        ).fetchall()
        cash = conn.execute(
            "SELECT cash, reserved_cash FROM accounts WHERE id = %s", (account.id,)
        ).fetchone()
    assert rows == [(f"fill:{order_id}:1", Decimal("5"), Decimal("19.9900"), "nasdaq")]
    assert cash == (Decimal("1000") - Decimal("99.95"), Decimal("0"))
