"""An order's whole round trip through `tapeflow run`: POST /v1/orders -> PostgreSQL ->
outbox relay -> oms.orders -> execution flow -> oms.executions -> ledger flow ->
PostgreSQL, with cancel and replace, and a SIGKILL of the whole process in the middle.

The market clock is set into a regular session (TAPEFLOW_CLOCK_START) so orders work at
once; the quote and the security directory are written into the pipeline's Redis.
"""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition

from infra import db
from infra.ledger import Ledger
from infra.quote_store import QuoteStore
from infra.topics import partitions_of
from schemas.marketdata import NBBO_VENUE, Quote, Security
from tests.conftest import Pipeline, new_user
from tests.e2e_support import until

pytestmark = pytest.mark.services
SYMBOL = "RTRP"


def _order_body(**extra) -> dict:
    return {
        "symbol": SYMBOL,
        "side": "buy",
        "type": "limit",
        "time_in_force": "day",
        "qty": "10",
        "limit_price": "50.00",
        **extra,
    }


def _oms_orders(pipeline: Pipeline) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": pipeline.settings.bootstrap,
            "group.id": f"check-{time.time_ns()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    orders = pipeline.topics.orders
    numbers = partitions_of(pipeline.settings.bootstrap, orders)
    parts = [TopicPartition(orders, p, 0) for p in numbers]
    ends = {p: consumer.get_watermark_offsets(tp, timeout=10)[1] for p, tp in enumerate(parts)}
    consumer.assign(parts)
    out: list[bytes] = []
    seen = {p: 0 for p in ends}
    deadline = time.monotonic() + 20
    while any(seen[p] < ends[p] for p in ends) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        seen[msg.partition()] = msg.offset() + 1
        out.append(msg.value())
    consumer.close()
    return out


def test_place_acknowledge_cancel_replace_and_survive_a_crash(services, pipeline: Pipeline):
    pipeline.env["TAPEFLOW_CLOCK_START"] = "2026-11-24T15:00:00Z"  # 10:00 New York
    ns = time.time_ns()
    QuoteStore(pipeline.settings.redis).apply(
        [
            Security(SYMBOL, "iex", 100, False, ns, ns),
            Quote(SYMBOL, NBBO_VENUE, Decimal("51.00"), 100, Decimal("51.02"), 100, ns, ns, ns),
        ]
    )
    _, account, token = new_user(services, rate_limit=10_000)
    ledger = Ledger(db.pool(services.postgres), pipeline.topics)
    ledger.deposit(account.id, Decimal("10000"))
    auth = {"Authorization": f"Bearer {token}"}
    pipeline.start()
    api = httpx.Client(base_url=pipeline.url, headers=auth, timeout=30)

    def status(order_id: str) -> str:
        return api.get(f"/v1/orders/{order_id}").json()["status"]

    first = api.post("/v1/orders", json=_order_body())
    assert first.status_code == 200, first.text
    first_id = first.json()["id"]
    assert first.json()["status"] == "pending_new"
    until(lambda: status(first_id) == "new", 60)

    canceled = api.delete(f"/v1/orders/{first_id}")
    assert canceled.json()["status"] == "pending_cancel"
    until(lambda: status(first_id) == "canceled", 30)
    assert Decimal(api.get("/v1/account").json()["reserved_cash"]) == 0

    second_id = api.post("/v1/orders", json=_order_body()).json()["id"]
    until(lambda: status(second_id) == "new", 30)
    replacing = api.patch(f"/v1/orders/{second_id}", json={"limit_price": "49.00"})
    assert replacing.status_code == 200, replacing.text
    third_id = replacing.json()["id"]
    assert replacing.json()["replaces"] == second_id
    until(lambda: status(third_id) == "new" and status(second_id) == "replaced", 30)
    account_now = api.get("/v1/account").json()
    assert Decimal(account_now["reserved_cash"]) == Decimal("490")  # 10 x 49, moved over

    # A crash with orders in flight: everything acknowledged still arrives exactly once.
    burst = [api.post("/v1/orders", json=_order_body(qty="1")).json()["id"] for _ in range(5)]
    pipeline.kill()
    pipeline.start()
    api = httpx.Client(base_url=pipeline.url, headers=auth, timeout=30)
    for order_id in burst:
        until(lambda order_id=order_id: status(order_id) == "new", 60)
    news = [m for m in _oms_orders(pipeline) if b'"kind":"new"' in m]
    ids = [m.split(b'"event_id":"', 1)[1].split(b'"', 1)[0] for m in _oms_orders(pipeline)]
    assert len(ids) == len(set(ids)), "an outbox row reached oms.orders twice"
    assert len(news) == 2 + len(burst)  # the replacing order travels inside its replace
    with db.pool(services.postgres).connection() as conn:
        anomalies = conn.execute(
            "SELECT count(*) FROM ledger_anomalies a JOIN orders o ON o.id = a.order_id "
            "WHERE o.account_id = %s",
            (account.id,),
        ).fetchone()[0]
    assert anomalies == 0
    final = api.get("/v1/account").json()
    assert Decimal(final["reserved_cash"]) == Decimal("490") + 5 * Decimal("50")
