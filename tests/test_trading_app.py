"""python -m api.trading: the PostgreSQL-and-Redis routes in an app without ClickHouse,
served by a real uvicorn process with two workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from infra import db
from infra.ledger import Ledger
from infra.quote_store import QuoteStore
from infra.settings import Settings
from infra.topics import Topics
from schemas.marketdata import NBBO_VENUE, Quote, Security
from tests.conftest import _free_port, new_user

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parent.parent
REDIS_DB = 8


@pytest.fixture(scope="module")
def trading(services: Settings, tmp_path_factory):
    port = _free_port()
    settings = Settings(redis_port=services.redis_port, redis_db=REDIS_DB)
    quotes = QuoteStore(settings.redis)
    quotes.redis.flushdb()
    ns = time.time_ns()
    quotes.apply(
        [
            Security("TRDA", "iex", 100, False, ns, ns),
            Quote("TRDA", NBBO_VENUE, Decimal("20.00"), 100, Decimal("20.02"), 100, ns, ns, ns),
        ]
    )
    env = {
        **os.environ,
        "TAPEFLOW_REDIS_DB": str(REDIS_DB),
        "TAPEFLOW_HOME": str(tmp_path_factory.mktemp("trading-home")),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.trading", "--port", str(port), "--workers", "2"],
        cwd=ROOT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "api.trading did not start"
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=20)
    quotes.redis.flushdb()


def test_orders_and_account_without_clickhouse(services: Settings, trading: str):
    _, account, token = new_user(services)
    Ledger(db.pool(services.postgres), Topics()).deposit(account.id, Decimal("1000"))
    auth = {"Authorization": f"Bearer {token}"}
    placed = httpx.post(
        f"{trading}/v1/orders",
        json={
            "symbol": "TRDA",
            "side": "buy",
            "type": "limit",
            "time_in_force": "day",
            "qty": "10",
            "limit_price": "19.50",
        },
        headers=auth,
    )
    assert placed.status_code == 200, placed.text
    order = placed.json()
    assert order["reserved_cash"] == "195.0000"
    got = httpx.get(f"{trading}/v1/orders/{order['id']}", headers=auth)
    assert got.json()["id"] == order["id"]
    money = httpx.get(f"{trading}/v1/account", headers=auth).json()
    assert Decimal(money["buying_power"]) == Decimal("805")
    # Candles need ClickHouse: not served here.
    assert httpx.get(f"{trading}/v1/candles/TRDA", headers=auth).status_code == 404
    assert httpx.post(f"{trading}/v1/orders", json={}).status_code == 401
