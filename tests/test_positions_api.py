"""Positions and the portfolio through HTTP: the real app (TestClient) on PostgreSQL,
Redis (database 10) and a temporary chDB holding the previous session's candles.
Positions rows are written directly, as the ledger flow's fills will write them."""

from __future__ import annotations

import time
from datetime import datetime
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from infra import db
from infra.clickhouse import release_shared_clickhouse
from infra.ledger import Ledger
from infra.quote_store import QuoteStore
from infra.settings import Settings
from infra.topics import Topics
from schemas.marketdata import NBBO_VENUE, Quote, Trade
from schemas.sale_conditions import eligibility
from tests.conftest import new_user

pytestmark = pytest.mark.services
REDIS_DB = 10
NY = ZoneInfo("America/New_York")
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=NY)  # Tuesday; Monday 11-23 is the previous day


def _trade(symbol: str, price: str, at: datetime) -> Trade:
    last, volume = eligibility(("@",))
    ns = int(at.timestamp() * 1e9)
    return Trade(symbol, "iex", f"{symbol}{ns}", D(price), 100, ("@",), ns, ns, last, volume)


@pytest.fixture(scope="module")
def env(services: Settings, tmp_path_factory):
    release_shared_clickhouse()
    settings = Settings(
        home=tmp_path_factory.mktemp("positions-home"),
        redis_port=services.redis_port,
        redis_db=REDIS_DB,
    )
    quotes = QuoteStore(settings.redis)
    quotes.redis.flushdb()
    ns = time.time_ns()
    quotes.apply(
        [
            Quote("AAPL", NBBO_VENUE, D("109.99"), 100, D("110.01"), 100, ns, ns, ns),
            Quote("MSFT", NBBO_VENUE, D("400.00"), 100, D("400.20"), 100, ns, ns, ns),
        ]
    )
    app = create_app(settings)
    app.state.clock = lambda: NOW
    monday_close = datetime(2026, 11, 23, 15, 59, tzinfo=NY)
    app.state.candles.apply([_trade("AAPL", "105.0000", monday_close)])
    with TestClient(app) as client:
        yield client
    release_shared_clickhouse()


def _holder(services: Settings, cash: str, positions: list[tuple[str, str, str, str]]):
    """A user whose account holds `positions` (symbol, qty, reserved qty, cost basis)."""
    _, account, token = new_user(services, rate_limit=10_000)
    pool = db.pool(services.postgres)
    if D(cash):
        Ledger(pool, Topics()).deposit(account.id, D(cash))
    with pool.connection() as conn:
        for symbol, qty, reserved, cost in positions:
            conn.execute(
                "INSERT INTO positions (account_id, symbol, qty, reserved_qty, cost_basis) "
                "VALUES (%s, %s, %s, %s, %s)",
                (account.id, symbol, qty, reserved, cost),
            )
    return {"Authorization": f"Bearer {token}"}


def test_a_position_valued_at_the_mid_with_todays_change(services, env: TestClient):
    auth = _holder(services, "1000", [("AAPL", "10", "4", "1000")])
    got = env.get("/v1/positions/AAPL", headers=auth)
    assert got.status_code == 200, got.text
    p = got.json()
    assert p["qty"] == "10.000000" and p["qty_available"] == "6.000000"
    assert D(p["avg_entry_price"]) == 100 and D(p["current_price"]) == D("110.00")
    assert D(p["market_value"]) == 1100 and D(p["unrealized_pl"]) == 100
    assert D(p["unrealized_plpc"]) == D("0.1")
    assert D(p["lastday_price"]) == 105  # Monday's close from the candles
    assert D(p["unrealized_intraday_pl"]) == 50
    assert D(p["change_today"]) == D("0.047619")


def test_without_a_quote_a_position_is_valued_at_cost(services, env: TestClient):
    auth = _holder(services, "0", [("NOQT", "3", "0", "30.5")])
    (p,) = env.get("/v1/positions", headers=auth).json()
    assert p["current_price"] is None and D(p["market_value"]) == D("30.5")
    assert D(p["unrealized_pl"]) == 0 and p["change_today"] is None


def test_the_portfolio_adds_cash_and_positions(services, env: TestClient):
    auth = _holder(services, "500", [("AAPL", "10", "0", "1000"), ("MSFT", "1", "0", "390")])
    got = env.get("/v1/portfolio", headers=auth).json()
    assert D(got["long_market_value"]) == 1100 + D("400.10")
    assert D(got["equity"]) == 500 + 1100 + D("400.10")
    assert D(got["unrealized_pl"]) == 100 + D("10.10")
    assert D(got["day_change"]) == 50  # MSFT has no previous close on record
    assert D(got["day_change_percent"]) == (D(50) / (D("2000.10") - 50)).quantize(D("0.000001"))
    assert got["positions"] == 2 and D(got["buying_power"]) == 500
    listed = env.get("/v1/positions", headers=auth).json()
    assert [p["symbol"] for p in listed] == ["AAPL", "MSFT"]


def test_positions_are_the_callers_own(services, env: TestClient):
    _holder(services, "0", [("AAPL", "10", "0", "1000")])  # someone else's
    auth = _holder(services, "0", [])
    assert env.get("/v1/positions", headers=auth).json() == []
    missing = env.get("/v1/positions/AAPL", headers=auth)
    assert missing.status_code == 404 and missing.json()["code"] == "position_not_found"
    empty = env.get("/v1/portfolio", headers=auth).json()
    assert D(empty["equity"]) == 0 and empty["positions"] == 0


def _sellable(services: Settings, env: TestClient, cash: str, qty: str, reserved: str = "0"):
    """A holder of `qty` AAPL whose position is sellable: security directory entry seeded."""
    from schemas.marketdata import Security

    QuoteStore(env.app.state.settings.redis).apply([Security("AAPL", "iex", 100, False, 1, 1)])
    return _holder(services, cash, [("AAPL", qty, reserved, str(D(qty) * 100))])


def test_closing_a_position_sells_its_free_shares_at_market(services, env: TestClient):
    auth = _sellable(services, env, "0", "10", reserved="4")
    closed = env.delete("/v1/positions/AAPL", headers=auth)
    assert closed.status_code == 200, closed.text
    order = closed.json()
    assert (order["side"], order["type"], order["time_in_force"]) == ("sell", "market", "day")
    assert D(order["qty"]) == 6 and D(order["reserved_qty"]) == 6  # 4 were already reserved
    again = env.delete("/v1/positions/AAPL", headers=auth)
    assert again.status_code == 403 and again.json()["code"] == "insufficient_qty"


def test_closing_part_of_a_position(services, env: TestClient):
    auth = _sellable(services, env, "0", "10")
    half = env.delete("/v1/positions/AAPL", params={"percentage": "33.3"}, headers=auth).json()
    assert D(half["qty"]) == D("3.33")
    some = env.delete("/v1/positions/AAPL", params={"qty": "2"}, headers=auth).json()
    assert D(some["qty"]) == 2
    both = env.delete("/v1/positions/AAPL", params={"qty": "1", "percentage": "5"}, headers=auth)
    assert both.status_code == 422 and both.json()["code"] == "qty_and_percentage"
    none = env.delete("/v1/positions/MSFT", headers=auth)
    assert none.status_code == 404 and none.json()["code"] == "position_not_found"
