"""Orders and account money through HTTP: the real app (TestClient), PostgreSQL and Redis
(database 9), with the security directory, trading status and NBBO quotes written through
QuoteStore.apply. The app's clock (app.state.clock) is fixed at Tuesday 2026-11-24 10:00
New York (regular session) unless a test moves it.

The execution side is not running here: where a test needs its answer (acknowledged,
canceled) it applies one with Ledger.apply, as the ledger flow will.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from infra import accounts, api_keys, db
from infra.clickhouse import release_shared_clickhouse
from infra.ledger import Ledger
from infra.market_view import symbol_view
from infra.quote_store import QuoteStore
from infra.settings import Settings
from infra.topics import topics_of
from schemas.marketdata import NBBO_VENUE, Quote, Security, Status
from tests.api_support import ALL_ROUTES
from tests.conftest import new_user

pytestmark = pytest.mark.services

REDIS_DB = 9
D = Decimal
NY = ZoneInfo("America/New_York")
OPEN_TIME = datetime(2026, 11, 24, 10, 0, tzinfo=NY)  # a Tuesday, regular session
ORDER_FIELDS = {
    "id",
    "client_order_id",
    "created_at",
    "updated_at",
    "submitted_at",
    "filled_at",
    "expired_at",
    "canceled_at",
    "failed_at",
    "replaced_at",
    "replaced_by",
    "replaces",
    "symbol",
    "side",
    "type",
    "time_in_force",
    "qty",
    "notional",
    "filled_qty",
    "filled_avg_price",
    "limit_price",
    "stop_price",
    "trail_price",
    "trail_percent",
    "hwm",
    "extended_hours",
    "status",
    "reject_reason",
    "reserve_price",
    "reserved_cash",
    "reserved_qty",
    "version",
}


def nbbo(symbol: str, bid: str, ask: str, ns: int) -> Quote:
    return Quote(symbol, NBBO_VENUE, D(bid), 100, D(ask), 100, ns, ns, 2 * ns)


def security(symbol: str, venue: str = "iex", test: bool = False) -> Security:
    return Security(symbol, venue, 100, test, 1, 1)


@pytest.fixture(scope="module")
def env(services: Settings, tmp_path_factory):
    release_shared_clickhouse()
    settings = Settings(
        home=tmp_path_factory.mktemp("orders-home"),
        redis_port=services.redis_port,
        redis_db=REDIS_DB,
    )
    quotes = QuoteStore(settings.redis)
    quotes.redis.flushdb()
    ns = time.time_ns()
    quotes.apply(
        [
            *(security(s) for s in ("AAPL", "MSFT", "HALT", "PENNY", "NOQ")),
            security("MSFT", "nasdaq", test=True),  # a test entry elsewhere does not matter
            security("ZTEST", test=True),  # only a test issue: not tradable
            nbbo("AAPL", "99.9900", "100.0000", ns),
            nbbo("MSFT", "400.0000", "400.1000", ns),
            nbbo("HALT", "10.0000", "10.0100", ns),
            nbbo("PENNY", "0.5000", "0.5001", ns),
            nbbo("ZTEST", "1.0000", "1.0100", ns),
            nbbo("ONEBID", "0", "12.0000", ns),  # one-sided: no quote for placement
            security("ONEBID"),
            Status("HALT", "iex", "trading", "", 1, ns),
            Status("HALT", "nasdaq", "halted", "LUDP", 2, ns),
        ]
    )
    app = create_app(settings)
    app.state.clock = lambda: OPEN_TIME
    with TestClient(app) as client:
        yield client, app, settings, quotes
    release_shared_clickhouse()


@pytest.fixture(scope="module")
def client(env) -> TestClient:
    return env[0]


@pytest.fixture(scope="module")
def app(env):
    return env[1]


@pytest.fixture(scope="module")
def ledger(services: Settings) -> Ledger:
    return Ledger(db.pool(services.postgres), topics_of(services))


@contextmanager
def clock_at(app, when: datetime) -> Iterator[None]:
    app.state.clock = lambda: when
    try:
        yield
    finally:
        app.state.clock = lambda: OPEN_TIME


class User:
    """A fresh user (their own account and key) driving the API."""

    def __init__(self, client: TestClient, services: Settings, cash: str | None = "100000"):
        self.user, self.account, token = new_user(services, rate_limit=1_000_000)
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}
        if cash:
            Ledger(db.pool(services.postgres), topics_of(services)).deposit(
                self.account.id, D(cash)
            )

    def request(self, method: str, path: str, **kw):
        headers = {**self.headers, **kw.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kw)

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw):
        return self.request("POST", path, **kw)

    def delete(self, path: str, **kw):
        return self.request("DELETE", path, **kw)

    def patch(self, path: str, **kw):
        return self.request("PATCH", path, **kw)

    def order(self, **kw) -> dict:
        resp = self.post("/v1/orders", json=limit_buy(**kw))
        assert resp.status_code == 200, resp.text
        return resp.json()

    def account_figures(self) -> dict:
        resp = self.get("/v1/account")
        assert resp.status_code == 200, resp.text
        return resp.json()


def limit_buy(**kw) -> dict:
    body = {
        "symbol": "AAPL",
        "side": "buy",
        "type": "limit",
        "time_in_force": "day",
        "qty": "10",
        "limit_price": "100.00",
    }
    body.update(kw)
    return {k: v for k, v in body.items() if v is not None}


@pytest.fixture
def alice(client, services) -> User:
    return User(client, services)


@pytest.fixture
def bob(client, services) -> User:
    return User(client, services)


def assert_error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == code and body["message"], body
    return body


def acknowledge(ledger: Ledger, order_id: str) -> None:
    event = {
        "event_id": f"test-ack-{order_id}",
        "kind": "acknowledged",
        "at": time.time_ns(),
        "order_id": order_id,
    }
    assert ledger.apply(event).outcome == "applied"


def confirm_cancel(ledger: Ledger, order_id: str) -> None:
    event = {
        "event_id": f"test-cancel-{order_id}",
        "kind": "canceled",
        "at": time.time_ns(),
        "order_id": order_id,
    }
    assert ledger.apply(event).outcome == "applied"


# --------------------------------------------------------------------- market view


def test_market_view_from_redis(env):
    quotes = env[3]
    aapl = symbol_view(quotes.redis, "AAPL", OPEN_TIME)
    assert aapl.known and aapl.market.tradable and not aapl.market.halted
    assert (aapl.market.bid, aapl.market.ask) == (D("99.9900"), D("100.0000"))
    assert aapl.market.session.kind == "regular"
    assert symbol_view(quotes.redis, "MSFT", OPEN_TIME).market.tradable, "one real venue is enough"
    assert not symbol_view(quotes.redis, "ZTEST", OPEN_TIME).market.tradable
    assert symbol_view(quotes.redis, "HALT", OPEN_TIME).market.halted, "any venue halted"
    one_sided = symbol_view(quotes.redis, "ONEBID", OPEN_TIME).market
    assert (one_sided.bid, one_sided.ask) == (None, None)
    assert not symbol_view(quotes.redis, "NOPE", OPEN_TIME).known


# ------------------------------------------------------------------------- placing


def test_place_answers_the_committed_order(alice, services):
    resp = alice.post("/v1/orders", json=limit_buy(client_order_id="first"))
    assert resp.status_code == 200, resp.text
    assert resp.headers["X-RateLimit-Limit"] == "1000000", "rate-limit headers as elsewhere"
    order = resp.json()
    assert set(order) == ORDER_FIELDS
    assert order["status"] == "pending_new"
    assert (order["symbol"], order["side"], order["type"]) == ("AAPL", "buy", "limit")
    assert order["client_order_id"] == "first"
    assert order["qty"] == "10.000000" and order["limit_price"] == "100.0000"
    assert order["reserved_cash"] == "1000.0000" and order["reserved_qty"] == "0.000000"
    assert order["created_at"].endswith("Z")
    assert order["notional"] is None and order["replaces"] is None
    assert alice.get(f"/v1/orders/{order['id']}").json() == order
    # Committed, with its message for oms.orders in the outbox.
    with db.pool(services.postgres).connection() as conn:
        (n,) = conn.execute(
            "SELECT count(*) FROM outbox WHERE convert_from(payload, 'UTF8') LIKE %s",
            (f'%"kind":"new"%{order["id"]}%',),
        ).fetchone()
    assert n == 1
    figures = alice.account_figures()
    assert (figures["cash"], figures["reserved_cash"], figures["buying_power"]) == (
        "100000.0000",
        "1000.0000",
        "99000.0000",
    )


def test_client_order_id_defaults_to_the_order_id(alice):
    order = alice.order()
    assert order["client_order_id"] == order["id"]


def test_outside_the_session_orders_are_accepted(alice, app):
    with clock_at(app, datetime(2026, 11, 24, 17, 0, tzinfo=NY)):  # after-market
        assert alice.order()["status"] == "accepted"
        assert alice.order(extended_hours=True)["status"] == "pending_new"
    with clock_at(app, datetime(2026, 11, 27, 13, 30, tzinfo=NY)):  # half day, closed 13:00
        assert alice.order()["status"] == "accepted"


def test_decimals_are_parsed_exactly(alice):
    # As floats these would be 0.1 and 2.0 and pass; read exactly they break the rules.
    resp = alice.post("/v1/orders", json=None, content=_raw(limit_price="0.10000000000000000555"))
    assert_error(resp, 422, "invalid_tick")
    resp = alice.post("/v1/orders", content=_raw(qty="2.0000000000000000001"))
    assert_error(resp, 422, "invalid_qty")
    # JSON numbers and strings alike, to the last digit.
    resp = alice.post("/v1/orders", content=_raw(qty="0.333333", limit_price="0.3001"))
    assert resp.status_code == 200, resp.text
    order = resp.json()
    assert (order["qty"], order["limit_price"]) == ("0.333333", "0.3001")
    assert order["reserved_cash"] == "0.1001"  # 0.1000332333 rounded up
    resp = alice.post("/v1/orders", json=limit_buy(qty="0.000001", limit_price="0.0003"))
    assert resp.json()["reserved_cash"] == "0.0001"


def _raw(**numbers: str) -> bytes:
    """A limit buy with the given fields as bare JSON numbers (their exact text)."""
    fields = {"qty": "10", "limit_price": "100.00", **numbers}
    nums = ", ".join(f'"{k}": {v}' for k, v in fields.items())
    head = '"symbol": "AAPL", "side": "buy", "type": "limit", "time_in_force": "day"'
    return f"{{{head}, {nums}}}".encode()


VALIDATION = {
    # name: (body changes, code)
    "malformed symbol": ({"symbol": "aa pl"}, "invalid_symbol"),
    "unknown symbol": ({"symbol": "NOPE"}, "unknown_symbol"),
    "test issue": ({"symbol": "ZTEST"}, "symbol_not_tradable"),
    "halted market order": (
        {"symbol": "HALT", "type": "market", "limit_price": None},
        "symbol_halted",
    ),
    "bad side": ({"side": "short"}, "invalid_parameter"),
    "unknown field": ({"leverage": "2"}, "invalid_parameter"),
    "bool as price": ({"limit_price": True}, "invalid_parameter"),
    "not a number": ({"qty": "ten"}, "invalid_parameter"),
    "qty and notional": ({"notional": "100"}, "qty_and_notional"),
    "neither qty nor notional": ({"qty": None}, "qty_required"),
    "zero qty": ({"qty": "0"}, "invalid_qty"),
    "seven places": ({"qty": "1.0000001"}, "invalid_qty"),
    "fractional gtc": ({"qty": "1.5", "time_in_force": "gtc"}, "fractional_not_allowed"),
    "notional in mills": (
        {"type": "market", "qty": None, "limit_price": None, "notional": "10.001"},
        "invalid_notional",
    ),
    "notional limit": ({"qty": None, "notional": "100"}, "notional_not_allowed"),
    "limit without price": ({"limit_price": None}, "missing_price"),
    "market with price": ({"type": "market"}, "unexpected_price"),
    "off tick above $1": ({"limit_price": "100.005"}, "invalid_tick"),
    "off tick below $1": ({"symbol": "PENNY", "limit_price": "0.50005"}, "invalid_tick"),
    "negative price": ({"limit_price": "-1"}, "invalid_price"),
    "trail percent 100": (
        {"type": "trailing_stop", "limit_price": None, "trail_percent": "100"},
        "invalid_trail_percent",
    ),
    "stop ioc": (
        {"type": "stop", "limit_price": None, "stop_price": "101", "time_in_force": "ioc"},
        "invalid_time_in_force",
    ),
    "extended market": (
        {"type": "market", "limit_price": None, "extended_hours": True},
        "extended_hours_not_allowed",
    ),
    "no quote": ({"symbol": "ONEBID", "type": "market", "limit_price": None}, "no_quote"),
}


@pytest.mark.parametrize("case", list(VALIDATION))
def test_each_rule_answers_422_with_its_code(alice, case):
    changes, code = VALIDATION[case]
    body = {**limit_buy(), **changes}
    resp = alice.post("/v1/orders", json={k: v for k, v in body.items() if v is not None})
    assert_error(resp, 422, code)
    assert alice.account_figures()["reserved_cash"] == "0.0000", "nothing reserved"


def test_auction_cutoff_through_http(alice, app):
    with clock_at(app, datetime(2026, 11, 24, 15, 55, tzinfo=NY)):
        assert_error(
            alice.post("/v1/orders", json=limit_buy(time_in_force="cls")), 422, "auction_closed"
        )
    assert alice.order(time_in_force="cls")["status"] == "pending_new"


def test_invalid_json_is_422(alice):
    assert_error(alice.post("/v1/orders", content=b"{not json"), 422, "invalid_parameter")
    assert_error(alice.post("/v1/orders", content=b'{"qty": NaN}'), 422, "invalid_parameter")


def test_insufficient_buying_power_and_shares_are_403(client, services, alice):
    poor = User(client, services, cash="999.99")
    resp = poor.post("/v1/orders", json=limit_buy(qty="10", limit_price="100.00"))
    assert_error(resp, 403, "insufficient_buying_power")
    assert poor.account_figures()["reserved_cash"] == "0.0000"
    assert poor.order(qty="9")["reserved_cash"] == "900.0000"
    sell = limit_buy(side="sell", qty="1")
    assert_error(alice.post("/v1/orders", json=sell), 403, "insufficient_qty")


def test_sells_reserve_shares(alice, services):
    with db.pool(services.postgres).connection() as conn:
        conn.execute(
            "INSERT INTO positions (account_id, symbol, qty, cost_basis) "
            "VALUES (%s, 'AAPL', 5, 450)",
            (alice.account.id,),
        )
    first = alice.order(side="sell", qty="3")
    assert (first["reserved_qty"], first["reserved_cash"]) == ("3.000000", "0.0000")
    resp = alice.post("/v1/orders", json=limit_buy(side="sell", qty="2.5"))
    assert_error(resp, 403, "insufficient_qty")  # 2 of 5 left: no short selling
    alice.order(side="sell", qty="2")


# --------------------------------------------------------------------- idempotency


def test_idempotency_key_replays_the_first_answer(alice):
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = alice.post("/v1/orders", json=limit_buy(), headers=key)
    assert first.status_code == 200, first.text
    again = alice.post("/v1/orders", json=limit_buy(), headers=key)
    assert (again.status_code, again.content) == (first.status_code, first.content)
    # The same request written differently (numbers, other key order, trailing zeros).
    same = alice.post("/v1/orders", content=_raw(qty="10.0", limit_price="100"), headers=key)
    assert (same.status_code, same.content) == (200, first.content)
    assert len(alice.get("/v1/orders").json()) == 1, "one order, whatever the retries"
    other = alice.post("/v1/orders", json=limit_buy(qty="11"), headers=key)
    assert_error(other, 422, "idempotency_key_reused")
    # Keys belong to an account: another key value is another request.
    alice.post("/v1/orders", json=limit_buy(), headers={"Idempotency-Key": "another"})
    assert len(alice.get("/v1/orders").json()) == 2


def test_refused_requests_are_not_remembered(client, services):
    user = User(client, services, cash="500")
    key = {"Idempotency-Key": "retry-me"}
    assert_error(
        user.post("/v1/orders", json=limit_buy(), headers=key), 403, "insufficient_buying_power"
    )
    Ledger(db.pool(services.postgres), topics_of(services)).deposit(user.account.id, D(1000))
    assert user.post("/v1/orders", json=limit_buy(), headers=key).status_code == 200


def test_concurrent_requests_with_one_key_make_one_order(alice):
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    barrier = threading.Barrier(12)

    def post(_: int):
        barrier.wait()
        return alice.post("/v1/orders", json=limit_buy(), headers=key)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(post, range(12)))
    assert {r.status_code for r in answers} == {200}, [r.text for r in answers]
    assert len({r.content for r in answers}) == 1, "every retry sees the same bytes"
    assert len(alice.get("/v1/orders").json()) == 1
    assert alice.account_figures()["reserved_cash"] == "1000.0000"


def test_client_order_id_is_unique_per_account(alice, bob):
    alice.order(client_order_id="mine")
    resp = alice.post("/v1/orders", json=limit_buy(client_order_id="mine"))
    assert_error(resp, 422, "duplicate_client_order_id")
    assert alice.account_figures()["reserved_cash"] == "1000.0000", "the refused one holds nothing"
    assert bob.order(client_order_id="mine")["client_order_id"] == "mine"


# ------------------------------------------------------------------------- reading


def test_get_and_by_client_order_id(alice):
    order = alice.order(client_order_id="abc-1")
    assert alice.get(f"/v1/orders/{order['id']}").json() == order
    found = alice.get("/v1/orders:by_client_order_id", params={"client_order_id": "abc-1"})
    assert found.status_code == 200 and found.json() == order
    missing = alice.get("/v1/orders:by_client_order_id", params={"client_order_id": "nope"})
    assert_error(missing, 404, "order_not_found")
    assert_error(alice.get(f"/v1/orders/{uuid.uuid4()}"), 404, "order_not_found")
    assert_error(alice.get("/v1/orders/not-a-uuid"), 404, "order_not_found")


def _pages(user: User, **params) -> list[list[dict]]:
    pages, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        resp = user.get("/v1/orders", params=query)
        assert resp.status_code == 200, resp.text
        pages.append(resp.json())
        cursor = resp.headers.get("X-Next-Cursor")
        if cursor is None:
            return pages
        assert len(pages) < 20


def test_list_pages_with_a_cursor_both_ways(alice):
    made = [
        alice.order(symbol="AAPL" if i % 2 else "MSFT", limit_price="100.00")["id"]
        for i in range(7)
    ]
    desc = _pages(alice, limit=3)
    assert [len(p) for p in desc] == [3, 3, 1]
    assert [o["id"] for p in desc for o in p] == made[::-1], "newest first, none twice or missing"
    asc = _pages(alice, limit=3, direction="asc")
    assert [o["id"] for p in asc for o in p] == made
    exact = _pages(alice, limit=7)
    assert len(exact) == 1, "no cursor when nothing follows"
    everything = alice.get("/v1/orders", params={"limit": 500}).json()
    assert [o["id"] for o in everything] == made[::-1]
    created = [o["created_at"] for o in everything]
    assert created == sorted(created, reverse=True)


def test_list_filters(alice, ledger):
    orders = [alice.order(symbol=s) for s in ("AAPL", "MSFT", "AAPL")]
    ids = [o["id"] for o in orders]
    alice.delete(f"/v1/orders/{ids[0]}")
    confirm_cancel(ledger, ids[0])  # terminal now: closed

    def listed(**params) -> list[str]:
        resp = alice.get("/v1/orders", params=params)
        assert resp.status_code == 200, resp.text
        return [o["id"] for o in resp.json()]

    assert listed() == [ids[2], ids[1]], "open by default"
    assert listed(status="closed") == [ids[0]]
    assert listed(status="all") == ids[::-1]
    assert listed(status="all", symbols="msft") == [ids[1]]
    assert listed(status="all", symbols="AAPL,MSFT", direction="asc") == ids
    second = orders[1]["created_at"]
    assert listed(status="all", after=second) == [ids[2]]
    assert listed(status="all", until=second) == [ids[0]]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert listed(status="all", after=future) == []
    assert_error(
        alice.get("/v1/orders", params={"after": "2026-11-24T10:00:00"}), 422, "invalid_time"
    )
    assert_error(alice.get("/v1/orders", params={"cursor": "garbage!"}), 422, "invalid_cursor")
    assert_error(alice.get("/v1/orders", params={"limit": 501}), 422, "invalid_parameter")
    assert_error(alice.get("/v1/orders", params={"status": "done"}), 422, "invalid_parameter")


# ------------------------------------------------------------------- cancel, replace


def test_cancel_is_pending_until_confirmed(alice, ledger):
    order = alice.order()
    resp = alice.delete(f"/v1/orders/{order['id']}")
    assert resp.status_code == 200, resp.text
    pending = resp.json()
    assert pending["status"] == "pending_cancel"
    assert pending["reserved_cash"] == "1000.0000", "held until the execution side confirms"
    assert alice.account_figures()["reserved_cash"] == "1000.0000"
    assert_error(alice.delete(f"/v1/orders/{order['id']}"), 422, "order_not_cancelable")
    confirm_cancel(ledger, order["id"])
    canceled = alice.get(f"/v1/orders/{order['id']}").json()
    assert (canceled["status"], canceled["reserved_cash"]) == ("canceled", "0.0000")
    assert canceled["canceled_at"] is not None
    assert alice.account_figures()["reserved_cash"] == "0.0000"
    assert_error(alice.delete(f"/v1/orders/{order['id']}"), 422, "order_not_cancelable")


def test_cancel_all_answers_207(alice):
    orders = [alice.order() for _ in range(3)]
    alice.delete(f"/v1/orders/{orders[0]['id']}")  # already pending: left out
    resp = alice.delete("/v1/orders")
    assert resp.status_code == 207, resp.text
    results = resp.json()
    assert [r["id"] for r in results] == [orders[1]["id"], orders[2]["id"]]
    for r in results:
        assert r["status"] == 200 and r["body"]["status"] == "pending_cancel"
        assert set(r["body"]) == ORDER_FIELDS
    again = alice.delete("/v1/orders")
    assert (again.status_code, again.json()) == (207, [])


def test_replace_reserves_only_the_extra(alice, ledger):
    old = alice.order(qty="10", limit_price="100.00")
    assert_error(
        alice.patch(f"/v1/orders/{old['id']}", json={"limit_price": "101.00"}),
        422,
        "order_not_replaceable",  # pending_new: the execution side has not taken it yet
    )
    acknowledge(ledger, old["id"])
    resp = alice.patch(
        f"/v1/orders/{old['id']}", json={"limit_price": 101.5, "client_order_id": "v2"}
    )
    assert resp.status_code == 200, resp.text
    new = resp.json()
    assert (new["replaces"], new["status"], new["client_order_id"]) == (
        old["id"],
        "pending_new",
        "v2",
    )
    assert (new["qty"], new["limit_price"], new["time_in_force"]) == (
        "10.000000",
        "101.5000",
        "day",
    )
    assert new["reserved_cash"] == "15.0000", "1015 needed, 1000 already held by the old order"
    was = alice.get(f"/v1/orders/{old['id']}").json()
    assert (was["status"], was["replaced_by"], was["reserved_cash"]) == (
        "pending_replace",
        new["id"],
        "1000.0000",
    )
    assert alice.account_figures()["reserved_cash"] == "1015.0000"
    # The execution side confirms: the old order is replaced, its reservation moves.
    event = {"event_id": f"test-rep-{old['id']}", "kind": "replaced", "at": time.time_ns()}
    assert ledger.apply({**event, "order_id": old["id"], "replaced_by": new["id"]}).outcome == (
        "applied"
    )
    assert alice.get(f"/v1/orders/{old['id']}").json()["status"] == "replaced"
    moved = alice.get(f"/v1/orders/{new['id']}").json()
    assert (moved["status"], moved["reserved_cash"]) == ("new", "1015.0000")
    assert alice.account_figures()["reserved_cash"] == "1015.0000"
    # A cheaper replacement adds nothing (the excess returns when it is confirmed).
    cheaper = alice.patch(f"/v1/orders/{new['id']}", json={"qty": "5"}).json()
    assert (cheaper["qty"], cheaper["reserved_cash"]) == ("5.000000", "0.0000")


def test_replace_rules(alice, client, services, ledger):
    limit = alice.order()
    acknowledge(ledger, limit["id"])
    path = f"/v1/orders/{limit['id']}"
    assert_error(alice.patch(path, json={}), 422, "invalid_parameter")
    assert_error(alice.patch(path, json={"trail": "1.00"}), 422, "unexpected_price")
    assert_error(alice.patch(path, json={"limit_price": "100.001"}), 422, "invalid_tick")
    assert_error(
        alice.patch(path, json={"qty": "1.5", "time_in_force": "gtc"}),
        422,
        "fractional_not_allowed",
    )
    assert_error(alice.patch(path, json={"qty": "100000"}), 403, "insufficient_buying_power")
    assert alice.get(path).json()["status"] == "new", "a refused replace changes nothing"
    trailing = alice.post(
        "/v1/orders",
        json=limit_buy(type="trailing_stop", limit_price=None, trail_percent="2", qty="1"),
    ).json()
    acknowledge(ledger, trailing["id"])
    resp = alice.patch(f"/v1/orders/{trailing['id']}", json={"trail": "3", "time_in_force": "gtc"})
    assert resp.status_code == 200, resp.text
    new = resp.json()
    assert (new["trail_percent"], new["trail_price"], new["time_in_force"]) == (
        "3.0000",
        None,
        "gtc",
    )


# ------------------------------------------------------------------------- account


def test_account_figures_value_positions(alice, services, env):
    quotes = env[3]
    alice.order(qty="10", limit_price="100.00")
    with db.pool(services.postgres).connection() as conn:
        for symbol, qty, cost in (("AAPL", "10", "900"), ("NOQ", "3", "31.5")):
            conn.execute(
                "INSERT INTO positions (account_id, symbol, qty, cost_basis) "
                "VALUES (%s, %s, %s, %s)",
                (alice.account.id, symbol, D(qty), D(cost)),
            )
    # AAPL at the midpoint (99.99 + 100.00) / 2 = 99.995; NOQ has no quote: at cost.
    assert symbol_view(quotes.redis, "NOQ", OPEN_TIME).market.ask is None
    figures = alice.account_figures()
    assert {k: figures[k] for k in ("cash", "reserved_cash", "buying_power")} == {
        "cash": "100000.0000",
        "reserved_cash": "1000.0000",
        "buying_power": "99000.0000",
    }
    assert figures["long_market_value"] == "1031.4500"  # 999.95 + 31.5
    assert figures["equity"] == "101031.4500"


def test_deposits_for_operators_or_when_allowed(client, services, app):
    plain = User(client, services, cash=None)
    assert_error(
        plain.post("/v1/account/deposits", json={"amount": "100"}), 403, "deposits_not_allowed"
    )
    pool = db.pool(services.postgres)
    op_user, op_account = accounts.create_user(
        pool, f"op{uuid.uuid4().hex[:10]}@test.local", "Operator", is_operator=True
    )
    _, token = api_keys.create_key(pool, op_user.id, "ops", rate_limit_per_minute=10_000)
    operator = {"Authorization": f"Bearer {token}"}
    resp = client.post(
        "/v1/account/deposits", json={"amount": 1234.56, "note": "x"}, headers=operator
    )
    assert resp.status_code == 200, resp.text
    assert (resp.json()["cash"], resp.json()["id"]) == ("1234.5600", str(op_account.id))
    for amount in ("0.001", "0", "-5", "1e30"):
        bad = client.post("/v1/account/deposits", json={"amount": amount}, headers=operator)
        assert_error(bad, 422, "invalid_amount")
    settings = app.state.settings
    app.state.settings = settings.model_copy(update={"allow_deposits": True})
    try:
        resp = plain.post("/v1/account/deposits", content=b'{"amount": 0.1}')
        assert resp.status_code == 200, resp.text
        resp = plain.post("/v1/account/deposits", content=b'{"amount": 0.2}')
        assert resp.json()["cash"] == "0.3000", "0.1 + 0.2 is 0.3 here"
    finally:
        app.state.settings = settings


def test_cli_funds_an_account(client, services):
    from infra.cli import app as cli

    user = User(client, services, cash=None)
    result = CliRunner().invoke(
        cli, ["accounts", "fund", "--email", user.user.email, "--amount", "10000"]
    )
    assert result.exit_code == 0, result.output
    assert "cash: 10000.0000" in result.output
    assert user.account_figures()["buying_power"] == "10000.0000"
    bad = CliRunner().invoke(
        cli, ["accounts", "fund", "--email", user.user.email, "--amount", "-5"]
    )
    assert bad.exit_code != 0


# ---------------------------------------------------------------- account isolation


def _isolation_cases() -> dict[tuple[str, str], Callable]:
    def by_id(method: str, **kw):
        def check(a: User, b: User, order: dict):
            resp = b.request(method, f"/v1/orders/{order['id']}", **kw)
            assert_error(resp, 404, "order_not_found")

        return check

    def by_coid(a: User, b: User, order: dict):
        params = {"client_order_id": order["client_order_id"]}
        assert_error(b.get("/v1/orders:by_client_order_id", params=params), 404, "order_not_found")

    def listing(a: User, b: User, order: dict):
        assert b.get("/v1/orders", params={"status": "all"}).json() == []

    def cancel_all(a: User, b: User, order: dict):
        assert b.delete("/v1/orders").json() == []

    def placing(a: User, b: User, order: dict):
        # B may reuse A's client_order_id: it is unique per account only.
        resp = b.post("/v1/orders", json=limit_buy(client_order_id=order["client_order_id"]))
        assert resp.status_code == 200 and resp.json()["id"] != order["id"]

    return {
        ("GET", "/v1/orders/{order_id}"): by_id("GET"),
        ("DELETE", "/v1/orders/{order_id}"): by_id("DELETE"),
        ("PATCH", "/v1/orders/{order_id}"): by_id("PATCH", json={"qty": "1"}),
        ("GET", "/v1/orders:by_client_order_id"): by_coid,
        ("GET", "/v1/orders"): listing,
        ("DELETE", "/v1/orders"): cancel_all,
        ("POST", "/v1/orders"): placing,
    }


ISOLATION = _isolation_cases()


def test_every_order_route_has_an_isolation_case():
    assert {r for r in ALL_ROUTES if r[1].startswith("/v1/orders")} == set(ISOLATION)


@pytest.mark.parametrize("route", list(ISOLATION), ids=lambda r: f"{r[0]} {r[1]}")
def test_another_accounts_order_is_not_found(alice, bob, ledger, route):
    order = alice.order(client_order_id=f"a-{uuid.uuid4().hex[:8]}")
    acknowledge(ledger, order["id"])  # replaceable, so only ownership can refuse
    ISOLATION[route](alice, bob, order)
    after = alice.get(f"/v1/orders/{order['id']}").json()
    assert (after["status"], after["version"]) == ("new", order["version"] + 1), "untouched"


# --------------------------------------------------------------------- concurrency


def test_concurrent_buys_never_overspend(client, services):
    user = User(client, services, cash="3000")
    body = limit_buy(qty="10", limit_price="100.00")  # 1000: a third of the cash
    seen: list[tuple[Decimal, Decimal]] = []
    stop = threading.Event()
    ledger = Ledger(db.pool(services.postgres), topics_of(services))

    def watch():
        while not stop.is_set():
            b = ledger.balance(user.account.id)
            seen.append((b.cash, b.reserved_cash))

    barrier = threading.Barrier(40)

    def post(_: int):
        barrier.wait()
        return user.post("/v1/orders", json=body)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(post, range(40)))
    finally:
        stop.set()
        watcher.join()
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 3 + [403] * 37, codes
    assert all(
        r.json()["code"] == "insufficient_buying_power" for r in answers if r.status_code == 403
    )
    assert seen and all(reserved <= cash for cash, reserved in seen)
    figures = user.account_figures()
    assert (figures["reserved_cash"], figures["buying_power"]) == ("3000.0000", "0.0000")
    assert len(user.get("/v1/orders").json()) == 3


@contextmanager
def through_fastapi(app) -> Iterator[None]:
    """POST /v1/orders through FastAPI's route instead of the fast path (api/routes/
    orders.py): the fast path steps aside while any dependency is overridden."""
    marker = object()
    app.dependency_overrides[marker] = lambda: None
    try:
        yield
    finally:
        app.dependency_overrides.pop(marker, None)


def _shape(resp) -> tuple:
    body = resp.json()
    if resp.status_code == 200:
        body = {k: v for k, v in body.items() if k not in ("id", "client_order_id")}
        body = {k: v for k, v in body.items() if not k.endswith("_at")}
    headers = {
        k: ("*" if k == "x-ratelimit-remaining" else v)
        for k, v in resp.headers.items()
        if k not in ("content-length", "date")
    }
    return resp.status_code, body, headers


def test_the_fast_path_answers_as_the_fastapi_route_does(client, services, app):
    poor = User(client, services, cash="50")
    _, _, limited = new_user(services, rate_limit=1)
    cases: list[tuple[str, dict, dict | bytes]] = [
        ("ok", {}, limit_buy(qty="1")),
        ("no token", {"Authorization": ""}, limit_buy()),
        ("bad token", {"Authorization": "Bearer nope"}, limit_buy()),
        ("basic", {"Authorization": "Basic abc"}, limit_buy()),
        ("bad json", {}, b"{"),
        ("bad field", {}, limit_buy(qty="-1")),
        ("unknown symbol", {}, limit_buy(symbol="NOPE")),
        ("rule", {}, limit_buy(limit_price="100.001")),
        ("funds", {}, limit_buy(qty="1000")),
        ("key too long", {"Idempotency-Key": "k" * 256}, limit_buy()),
    ]
    for name, headers, body in cases:
        answers = []
        for fast in (True, False):
            user = poor if name == "funds" else User(client, services)
            kw = {"content": body} if isinstance(body, bytes) else {"json": body}
            if fast:
                resp = user.post("/v1/orders", headers=headers, **kw)
            else:
                with through_fastapi(app):
                    resp = user.post("/v1/orders", headers=headers, **kw)
            answers.append(_shape(resp))
        assert answers[0] == answers[1], name
    # rate limited: the second request of a key allowed one a minute, both ways
    for fast in (True, False):
        _, _, limited = new_user(services, rate_limit=1)
        auth = {"Authorization": f"Bearer {limited}"}
        client.post("/v1/orders", headers=auth, json=limit_buy())
        if fast:
            resp = client.post("/v1/orders", headers=auth, json=limit_buy())
        else:
            with through_fastapi(app):
                resp = client.post("/v1/orders", headers=auth, json=limit_buy())
        assert resp.status_code == 429 and resp.json()["code"] == "rate_limited"
        assert resp.headers["Retry-After"] and resp.headers["X-RateLimit-Limit"] == "1"
    # an idempotent retry replays byte for byte, whichever path placed or replays it
    bob = User(client, services)
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = bob.post("/v1/orders", headers=key, json=limit_buy(qty="2"))
    with through_fastapi(app):
        again = bob.post("/v1/orders", headers=key, json=limit_buy(qty="2"))
    assert first.status_code == again.status_code == 200
    assert first.content == again.content
