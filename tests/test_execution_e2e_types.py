"""IOC, FOK, a stop and a trailing stop, and smart routing over two venues, end to end
through `tapeflow run`: orders placed with POST /v1/orders, scripted JSON-lines feeds
replayed into md.raw.nasdaq (and md.raw.iex) in steps, and the fills checked exactly in
PostgreSQL (prices, sizes, venues, routes, the trade that triggered).

Each order is placed, and its answer awaited, before the market data it meets, so the
fills are the same on every run (README, "The order side": determinism).
"""

from __future__ import annotations

import time
from decimal import Decimal as D
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from psycopg_pool import ConnectionPool

from infra import db
from infra.ledger import Ledger
from infra.quote_store import QuoteStore
from infra.replay import replay
from schemas.marketdata import NBBO_VENUE, Quote, Security
from tests.conftest import Pipeline, new_user
from tests.e2e_support import until

pytestmark = pytest.mark.services
SYMBOL = "XTYP"


def q(second: int, bid: str, ask: str, size: int = 100, symbol: str = SYMBOL) -> str:
    return (
        f'{{"T":"q","S":"{symbol}","bx":"Q","bp":"{bid}","bs":{size},"ax":"Q","ap":"{ask}",'
        f'"as":{size},"t":"2026-11-24T15:00:{second:02d}Z"}}'
    )


def t(second: int, price: str, tid: int, symbol: str = SYMBOL) -> str:
    return (
        f'{{"T":"t","S":"{symbol}","i":"{tid}","x":"Q","p":"{price}","s":100,'
        f'"t":"2026-11-24T15:00:{second:02d}.5Z","c":["@"]}}'
    )


def _funded_api(services, pipeline: Pipeline) -> tuple[UUID, ConnectionPool, httpx.Client]:
    """A new user's account with 10,000 of cash; the pipeline started; an API client of
    that user."""
    _, account, token = new_user(services, rate_limit=10_000)
    pool = db.pool(services.postgres)
    Ledger(pool, pipeline.topics).deposit(account.id, D("10000"))
    pipeline.start()
    api = httpx.Client(
        base_url=pipeline.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    return account.id, pool, api


def _replay(pipeline: Pipeline, path: Path, venue: str, *lines: str) -> None:
    """`lines` written to `path`, then replayed into the venue's raw topic."""
    path.write_text("\n".join(lines) + "\n")
    replay(path, venue, pipeline.settings.bootstrap, speed=None, topic=pipeline.topics.raw(venue))


def test_ioc_fok_stop_and_trailing_stop(services, pipeline: Pipeline, tmp_path: Path):
    pipeline.env["TAPEFLOW_CLOCK_START"] = "2026-11-24T15:00:00Z"  # 10:00 New York
    ns = time.time_ns()
    QuoteStore(pipeline.settings.redis).apply(
        [
            Security(SYMBOL, "nasdaq", 100, False, ns, ns),
            # version 1: older than the feed's quotes, which then replace it in Redis
            Quote(SYMBOL, NBBO_VENUE, D("29.90"), 100, D("30.00"), 100, 1, ns, 1),
        ]
    )
    account, pool, api = _funded_api(services, pipeline)

    def feed(name: str, *lines: str) -> None:
        _replay(pipeline, tmp_path / f"{name}.jsonl", "nasdaq", *lines)

    def place(**body) -> str:
        answer = api.post("/v1/orders", json={"symbol": SYMBOL, "qty": "1", **body})
        assert answer.status_code == 200, answer.text
        return answer.json()["id"]

    def order(order_id: str) -> dict:
        return api.get(f"/v1/orders/{order_id}").json()

    # 1. A resting buy fills at the first quote: 10 shares to sell later.
    base = place(side="buy", type="limit", time_in_force="day", qty="10", limit_price="30.00")
    until(lambda: order(base)["status"] == "new")
    feed("open", q(1, "29.90", "30.00"))
    until(lambda: order(base)["status"] == "filled")

    # 2. IOC and FOK against that quote (ask 30.00, 90 of its 100 shares left).
    ioc_none = place(side="buy", type="limit", time_in_force="ioc", qty="5", limit_price="29.80")
    fok_big = place(side="buy", type="limit", time_in_force="fok", qty="200", limit_price="30.00")
    ioc_fill = place(side="buy", type="limit", time_in_force="ioc", qty="5", limit_price="30.00")
    until(
        lambda: all(
            order(i)["status"] in ("canceled", "filled") for i in (ioc_none, fok_big, ioc_fill)
        )
    )
    assert (order(ioc_none)["status"], order(ioc_none)["filled_qty"]) == ("canceled", "0.000000")
    assert (order(fok_big)["status"], order(fok_big)["filled_qty"]) == ("canceled", "0.000000")
    assert (order(ioc_fill)["status"], order(ioc_fill)["filled_qty"]) == ("filled", "5.000000")

    # 3. Stops wait for the last regular trade at or through their price.
    stop = place(side="sell", type="stop", time_in_force="gtc", qty="3", stop_price="29.00")
    trail = place(
        side="sell", type="trailing_stop", time_in_force="gtc", qty="2", trail_price="0.50"
    )
    until(lambda: order(stop)["status"] == "new" and order(trail)["status"] == "new")

    # Quotes and trades travel on two topics: each trigger trade goes after its quote
    # has been taken (the Redis NBBO shows the normalized quote is out), so the fill
    # meets that quote on every run.
    def step(name: str, quote: str, trade: str, bid: str) -> None:
        feed(name + "-quote", quote)
        until(lambda: D(api.get(f"/v1/quotes/{SYMBOL}").json()["nbbo"]["bid_price"]) == D(bid))
        time.sleep(0.5)
        feed(name + "-trade", trade)

    step("high", q(5, "30.30", "30.40"), t(6, "30.40", 1), "30.30")  # mark 30.40: trigger 29.90
    step("trail", q(7, "29.86", "29.90"), t(8, "29.88", 2), "29.86")  # trailing sells 2
    until(lambda: order(trail)["status"] == "filled")
    step("stop", q(9, "28.90", "28.95"), t(10, "28.95", 3), "28.90")  # the stop sells 3
    until(lambda: order(stop)["status"] == "filled" and order(trail)["status"] == "filled")

    with pool.connection() as conn:
        fills = conn.execute(
            "SELECT order_id::text, side, qty, price FROM executions WHERE account_id = %s "
            "ORDER BY executed_at, id",
            (account,),
        ).fetchall()
        position = conn.execute(
            "SELECT qty FROM positions WHERE account_id = %s AND symbol = %s",
            (account, SYMBOL),
        ).fetchone()[0]
        anomalies = conn.execute(
            "SELECT count(*) FROM ledger_anomalies a JOIN orders o ON o.id = a.order_id "
            "WHERE o.account_id = %s",
            (account,),
        ).fetchone()[0]
    # (the first two share the first quote's time, so compare without order)
    assert sorted(fills) == sorted(
        [
            (base, "buy", D(10), D("30.0000")),
            (ioc_fill, "buy", D(5), D("30.0000")),
            (trail, "sell", D(2), D("29.8600")),
            (stop, "sell", D(3), D("28.9000")),
        ]
    )
    assert position == D(10)
    assert anomalies == 0


def test_a_triggered_stop_sweeps_two_venues_and_records_the_route(
    services, pipeline: Pipeline, tmp_path: Path
):
    """Smart routing end to end: iex and nasdaq each quote (JSON lines on their own raw
    topics); a stop buy triggered by a trade takes iex's better ask for all it shows,
    then sweeps nasdaq for the rest, and both fills record the route."""
    symbol = "XSWP"
    pipeline.env["TAPEFLOW_CLOCK_START"] = "2026-11-24T15:00:00Z"  # 10:00 New York
    ns = time.time_ns()
    QuoteStore(pipeline.settings.redis).apply(
        [Security(symbol, venue, 100, False, ns, ns) for venue in ("iex", "nasdaq")]
    )
    _, pool, api = _funded_api(services, pipeline)

    def feed(venue: str, line: str) -> None:
        _replay(pipeline, tmp_path / f"{venue}-{time.time_ns()}.jsonl", venue, line)

    answer = api.post(
        "/v1/orders",
        json={
            "symbol": symbol,
            "side": "buy",
            "type": "stop",
            "time_in_force": "day",
            "qty": "8",
            "stop_price": "50.00",
        },
    )
    assert answer.status_code == 200, answer.text
    stop = answer.json()["id"]
    until(lambda: api.get(f"/v1/orders/{stop}").json()["status"] == "new")

    feed("iex", q(1, "49.90", "50.00", size=3, symbol=symbol))
    feed("nasdaq", q(1, "49.90", "50.05", size=10, symbol=symbol))

    def both_venues_quoted() -> bool:
        held = api.get(f"/v1/quotes/{symbol}").json()
        return {"iex", "nasdaq"} <= set(held.get("venues") or {})

    until(both_venues_quoted)
    time.sleep(0.5)  # the desk reads md.quotes beside the quotes flow: let it take them
    feed("nasdaq", t(2, "50.00", 1, symbol=symbol))  # the last trade reaches the stop
    until(lambda: api.get(f"/v1/orders/{stop}").json()["status"] == "filled")

    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT id, qty, price, venue, route FROM executions WHERE order_id = %s ORDER BY id",
            (stop,),
        ).fetchall()
    route = ["iex", "nasdaq"]
    assert rows == [
        (f"fill:{stop}:1", D("3"), D("50.0000"), "iex", route),
        (f"fill:{stop}:2", D("5"), D("50.0500"), "nasdaq", route),
    ]
    assert api.get(f"/v1/orders/{stop}").json()["filled_qty"] == "8.000000"
