"""Account updates end to end through `tapeflow run`: orders placed and canceled over
REST, acknowledged and filled by the execution flow against a replayed feed, applied by
the ledger flow, which publishes each account event; the owner's WS /v1/stream gets
them as trade_update events in account seq order, and a reconnect with `since` gets the
rest from PostgreSQL."""

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
from tests.stream_support import check_sequence, client

pytestmark = pytest.mark.services
SYMBOL = "XACU"


def _feed(path: Path) -> Path:
    """nasdaq quotes on 2026-11-24 at 10:00:0x New York (the regular session)."""

    def q(second: int, ask: str, ask_size: int) -> str:
        return (
            f'{{"T":"q","S":"{SYMBOL}","bx":"Q","bp":"48.00","bs":100,"ax":"Q",'
            f'"ap":"{ask}","as":{ask_size},"t":"2026-11-24T15:00:{second:02d}Z"}}'
        )

    path.write_text("\n".join([q(1, "50.20", 100), q(2, "50.00", 4), q(3, "49.95", 20)]) + "\n")
    return path


def updates(events: list[dict]) -> list[dict]:
    return [e["data"] for e in events if e["T"] == "trade_update"]


def test_order_events_reach_the_owner_through_the_pipeline(
    services, pipeline: Pipeline, tmp_path
) -> None:
    pipeline.env["TAPEFLOW_CLOCK_START"] = "2026-11-24T15:00:00Z"  # 10:00 New York
    ns = time.time_ns()
    QuoteStore(pipeline.settings.redis).apply(
        [
            Security(SYMBOL, "nasdaq", 100, False, ns, ns),
            Quote(SYMBOL, NBBO_VENUE, Decimal("48.00"), 100, Decimal("50.20"), 100, ns, ns, ns),
        ]
    )
    _, account, token = new_user(services, rate_limit=10_000)
    Ledger(db.pool(services.postgres), pipeline.topics).deposit(account.id, Decimal("10000"))
    pipeline.start()
    api = httpx.Client(
        base_url=pipeline.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    ws_url = pipeline.url.replace("http://", "ws://") + "/v1/stream"

    def place(qty: str, limit: str) -> str:
        body = {"symbol": SYMBOL, "side": "buy", "type": "limit", "time_in_force": "day"}
        answer = api.post("/v1/orders", json={**body, "qty": qty, "limit_price": limit})
        assert answer.status_code == 200, answer.text
        return answer.json()["id"]

    with client(ws_url, token) as ws:
        ws.send({"action": "subscribe", "trade_updates": True})
        assert ws.until(lambda e: e["T"] == "subscription")["trade_updates"] is True
        a, b = place("10", "50.00"), place("5", "49.00")
        ws.until(lambda e: len(updates(ws.events)) >= 2, timeout=60)
        replay(
            _feed(tmp_path / "feed.jsonl"),
            "nasdaq",
            pipeline.settings.bootstrap,
            speed=None,
            topic=pipeline.topics.raw("nasdaq"),
        )
        ws.until(lambda e: len(updates(ws.events)) >= 4, timeout=60)
        assert api.delete(f"/v1/orders/{b}").status_code == 200
        ws.until(lambda e: len(updates(ws.events)) >= 5, timeout=60)
        ws.drain(0.3)
        got = updates(ws.events)
        check_sequence(ws.events)
    assert sorted((u["event"], u["order"]["id"]) for u in got[:2]) == sorted(
        [("new", a), ("new", b)]
    )
    assert [(u["event"], u["order"]["id"]) for u in got[2:]] == [
        ("partial_fill", a),
        ("fill", a),
        ("canceled", b),
    ]
    assert [u["seq"] for u in got] == [1, 2, 3, 4, 5]
    assert [(u["qty"], u["price"], u["venue"]) for u in got[2:4]] == [
        ("4.000000", "50.0000", "nasdaq"),
        ("6.000000", "49.9500", "nasdaq"),
    ]
    assert got[3]["order"]["status"] == "filled" and got[3]["position_qty"] == "10.000000"

    with client(ws_url, token) as ws:  # back with the seq of the first fill
        ws.send({"action": "subscribe", "trade_updates": True, "since": 3})
        ws.until(lambda e: len(updates(ws.events)) >= 2, timeout=10)
        ws.drain(0.3)
        assert [(u["seq"], u["event"]) for u in updates(ws.events)] == [
            (4, "fill"),
            (5, "canceled"),
        ]
