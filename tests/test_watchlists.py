"""Watchlists on the real app: PostgreSQL, Redis (database 10) for quotes, and a temporary
chDB home whose candles are written with CandleStore for the day change.

chDB allows one data directory per process: this module closes any other module's
client first, and its own at the end.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from infra.clickhouse import release_shared_clickhouse
from infra.day_change import day_changes
from infra.quote_store import QuoteStore
from infra.settings import Settings
from infra.watchlists import MAX_SYMBOLS, MAX_WATCHLISTS
from schemas.marketdata import NBBO_VENUE, Quote, Trade
from schemas.sale_conditions import eligibility
from schemas.sessions import previous_session
from tests.api_support import PROTECTED_ROUTES, fill, route_id
from tests.conftest import new_user

pytestmark = pytest.mark.services

REDIS_DB = 10
D = Decimal
S = 1_000_000_000
KNOWN = ["AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "GOOG", "META", "VENUEONLY", "BRK.B"]
MANY = [f"S{i:03d}" for i in range(MAX_SYMBOLS + 1)]


def ny_ns(day: date, hh: int, mm: int) -> int:
    from zoneinfo import ZoneInfo

    t = datetime(day.year, day.month, day.day, hh, mm, tzinfo=ZoneInfo("America/New_York"))
    return int(t.timestamp()) * S


def trade(symbol: str, tid: str, price: str, ns: int, conditions=("@",)) -> Trade:
    last, volume = eligibility(conditions)
    return Trade(symbol, "iex", tid, D(price), 100, conditions, ns, ns, last, volume)


def nbbo(symbol: str, bid: str, ask: str) -> Quote:
    now = time.time_ns()
    return Quote(symbol, NBBO_VENUE, D(bid), 100, D(ask), 200, now, now, 2 * now)


MON, TUE, WED, FRI = date(2026, 11, 23), date(2026, 11, 24), date(2026, 11, 25), date(2026, 11, 27)
FRI_BEFORE = date(2026, 11, 20)
TRADES = [
    # AAPL: Monday closes at 100 (the last minute's odd lot sets no close), Tuesday last 105.
    trade("AAPL", "m1", "99.5000", ny_ns(MON, 10, 0)),
    trade("AAPL", "m2", "100.0000", ny_ns(MON, 15, 59)),
    trade("AAPL", "m3", "130.0000", ny_ns(MON, 16, 30) + 1, ("I",)),
    trade("AAPL", "t1", "104.0000", ny_ns(TUE, 9, 31)),
    trade("AAPL", "t2", "105.0000", ny_ns(TUE, 11, 0)),
    trade("AAPL", "t3", "1.0000", ny_ns(TUE, 11, 5), ("I",)),  # odd lot: not a last price
    # MSFT: Friday 200, Monday 190 (the weekend is skipped).
    trade("MSFT", "f1", "200.0000", ny_ns(FRI_BEFORE, 15, 0)),
    trade("MSFT", "m1", "190.0000", ny_ns(MON, 12, 0)),
    # NVDA: Wednesday 50, then Thanksgiving (no session), Friday 55.
    trade("NVDA", "w1", "50.0000", ny_ns(WED, 15, 0)),
    trade("NVDA", "f1", "55.0000", ny_ns(FRI, 10, 0)),
    # TSLA: trades on Tuesday only: the previous session's close is unknown.
    trade("TSLA", "t1", "300.0000", ny_ns(TUE, 10, 0)),
]


@pytest.fixture(scope="module")
def env(services: Settings, tmp_path_factory):
    release_shared_clickhouse()
    settings = Settings(
        home=tmp_path_factory.mktemp("watchlists-home"),
        redis_port=services.redis_port,
        redis_db=REDIS_DB,
    )
    quotes = QuoteStore(settings.redis)
    quotes.redis.flushdb()
    venue_only = Quote("VENUEONLY", "iex", D("1.0000"), 1, D("1.1000"), 1, 1, time.time_ns(), 1)
    quotes.apply(
        [nbbo(s, "10.0000", "10.0100") for s in KNOWN if s != "VENUEONLY"]
        + [venue_only]
        + [nbbo(s, "1.0000", "1.0100") for s in MANY]
    )
    app = create_app(settings)
    app.state.candles.apply(TRADES)
    with TestClient(app) as client:
        yield client, app
    release_shared_clickhouse()


@pytest.fixture(scope="module")
def client(env) -> TestClient:
    return env[0]


class User:
    """A fresh user driving the API with their own key."""

    def __init__(self, client: TestClient, services: Settings) -> None:
        _, self.account, token = new_user(services, rate_limit=100_000)
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def __getattr__(self, method: str):
        def call(path: str, **kwargs):
            return self.client.request(method.upper(), path, headers=self.headers, **kwargs)

        return call

    def create(self, name: str = "tech", symbols=()) -> dict:
        resp = self.post("/v1/watchlists", json={"name": name, "symbols": list(symbols)})
        assert resp.status_code == 201, resp.text
        return resp.json()


@pytest.fixture
def alice(client, services) -> User:
    return User(client, services)


@pytest.fixture
def bob(client, services) -> User:
    return User(client, services)


def parse(t: str) -> datetime:
    return datetime.fromisoformat(t.replace("Z", "+00:00"))


def assert_error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == code and body["message"], body
    return body


# ------------------------------------------------------------------------------- CRUD


def test_create_list_get_update_delete(alice):
    assert alice.get("/v1/watchlists").json() == []
    created = alice.create("Tech", ["msft", "AAPL", " nvda "])
    assert created["name"] == "Tech"
    assert created["symbols"] == ["MSFT", "AAPL", "NVDA"], "normalized, in the given order"
    assert created["account_id"] == str(alice.account.id)
    assert created["created_at"] == created["updated_at"]
    wid = created["id"]
    assert alice.get("/v1/watchlists").json() == [created]

    detail = alice.get(f"/v1/watchlists/{wid}").json()
    assert {k: detail[k] for k in created} == created
    assert [a["symbol"] for a in detail["assets"]] == ["MSFT", "AAPL", "NVDA"]

    renamed = alice.put(f"/v1/watchlists/{wid}", json={"name": "Chips"}).json()
    assert (renamed["name"], renamed["symbols"]) == ("Chips", created["symbols"])
    assert parse(renamed["updated_at"]) > parse(created["updated_at"])
    replaced = alice.put(f"/v1/watchlists/{wid}", json={"symbols": ["NVDA", "TSLA"]}).json()
    assert (replaced["name"], replaced["symbols"]) == ("Chips", ["NVDA", "TSLA"])
    both = alice.put(f"/v1/watchlists/{wid}", json={"name": "Both", "symbols": []}).json()
    assert (both["name"], both["symbols"]) == ("Both", [])

    assert alice.delete(f"/v1/watchlists/{wid}").status_code == 204
    assert_error(alice.get(f"/v1/watchlists/{wid}"), 404, "watchlist_not_found")
    assert_error(alice.delete(f"/v1/watchlists/{wid}"), 404, "watchlist_not_found")
    assert alice.get("/v1/watchlists").json() == []


def test_symbols_keep_their_order(alice):
    wid = alice.create("order", ["MSFT", "AAPL", "NVDA"])["id"]
    resp = alice.post(f"/v1/watchlists/{wid}/symbols", json={"symbol": "tsla"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["symbols"] == ["MSFT", "AAPL", "NVDA", "TSLA"], "appended at the end"
    resp = alice.delete(f"/v1/watchlists/{wid}/symbols/aapl")
    assert resp.status_code == 200, resp.text
    assert resp.json()["symbols"] == ["MSFT", "NVDA", "TSLA"]
    alice.post(f"/v1/watchlists/{wid}/symbols", json={"symbol": "AAPL"})
    alice.post(f"/v1/watchlists/{wid}/symbols", json={"symbol": "BRK.B"})
    expected = ["MSFT", "NVDA", "TSLA", "AAPL", "BRK.B"]
    assert alice.get(f"/v1/watchlists/{wid}").json()["symbols"] == expected
    assert [a["symbol"] for a in alice.get(f"/v1/watchlists/{wid}").json()["assets"]] == expected
    reordered = alice.put(f"/v1/watchlists/{wid}", json={"symbols": expected[::-1]}).json()
    assert reordered["symbols"] == expected[::-1]
    # Removing the first and appending again keeps positions distinct and ordered.
    alice.delete(f"/v1/watchlists/{wid}/symbols/BRK.B")
    alice.post(f"/v1/watchlists/{wid}/symbols", json={"symbol": "BRK.B"})
    assert alice.get(f"/v1/watchlists/{wid}").json()["symbols"] == [
        "AAPL",
        "TSLA",
        "NVDA",
        "MSFT",
        "BRK.B",
    ]


def test_lists_come_oldest_first(alice):
    ids = [alice.create(f"list {i}")["id"] for i in range(3)]
    assert [w["id"] for w in alice.get("/v1/watchlists").json()] == ids


# ------------------------------------------------------------------------- validation


@pytest.mark.parametrize("bad", ["BAD!", "1ABC", "A_B", "", "TOOLONGSYMBOL"])
def test_invalid_tickers_are_422(alice, bad):
    wid = alice.create("v")["id"]
    body = {"name": "x", "symbols": ["AAPL", bad]}
    assert_error(alice.post("/v1/watchlists", json=body), 422, "invalid_symbol")
    assert_error(alice.put(f"/v1/watchlists/{wid}", json=body), 422, "invalid_symbol")
    resp = alice.post(f"/v1/watchlists/{wid}/symbols", json={"symbol": bad})
    assert_error(resp, 422, "invalid_symbol")


def test_symbols_without_market_data_are_404(alice):
    wid = alice.create("v")["id"]
    resp = alice.post("/v1/watchlists", json={"name": "x", "symbols": ["AAPL", "ZZZZ", "YYYY"]})
    body = assert_error(resp, 404, "symbol_not_found")
    assert "ZZZZ" in body["message"] and "YYYY" in body["message"]
    resp = alice.put(f"/v1/watchlists/{wid}", json={"symbols": ["ZZZZ"]})
    assert_error(resp, 404, "symbol_not_found")
    resp = alice.post(f"/v1/watchlists/{wid}/symbols", json={"symbol": "ZZZZ"})
    assert_error(resp, 404, "symbol_not_found")
    assert alice.get(f"/v1/watchlists/{wid}").json()["symbols"] == [], "nothing changed"


def test_duplicates_are_refused(alice):
    resp = alice.post("/v1/watchlists", json={"name": "d", "symbols": ["AAPL", "aapl"]})
    assert_error(resp, 422, "duplicate_symbol")
    wid = alice.create("d", ["AAPL"])["id"]
    resp = alice.post(f"/v1/watchlists/{wid}/symbols", json={"symbol": "AAPL"})
    assert_error(resp, 422, "duplicate_symbol")
    resp = alice.put(f"/v1/watchlists/{wid}", json={"symbols": ["MSFT", "MSFT"]})
    assert_error(resp, 422, "duplicate_symbol")
    assert alice.get(f"/v1/watchlists/{wid}").json()["symbols"] == ["AAPL"]


def test_removing_an_absent_symbol_is_404(alice):
    wid = alice.create("r", ["AAPL"])["id"]
    resp = alice.delete(f"/v1/watchlists/{wid}/symbols/MSFT")
    assert_error(resp, 404, "symbol_not_in_watchlist")
    assert_error(alice.delete(f"/v1/watchlists/{wid}/symbols/B@D"), 422, "invalid_symbol")


def test_names_are_unique_per_account(alice, bob):
    alice.create("Mine")
    other = alice.create("Other")
    assert_error(alice.post("/v1/watchlists", json={"name": "Mine"}), 409, "watchlist_exists")
    resp = alice.put(f"/v1/watchlists/{other['id']}", json={"name": "Mine"})
    assert_error(resp, 409, "watchlist_exists")
    assert alice.get(f"/v1/watchlists/{other['id']}").json()["name"] == "Other"
    assert bob.create("Mine")["name"] == "Mine", "another account may use the name"
    # Renaming to its own name is no conflict.
    same = alice.put(f"/v1/watchlists/{other['id']}", json={"name": "Other"})
    assert same.status_code == 200


@pytest.mark.parametrize(
    "body",
    [{}, {"name": ""}, {"name": "   "}, {"name": "x" * 65}, {"name": "ok", "symbols": "AAPL"}],
)
def test_bad_bodies_are_invalid_parameter(alice, body):
    assert_error(alice.post("/v1/watchlists", json=body), 422, "invalid_parameter")


def test_update_needs_something_to_change(alice):
    wid = alice.create("u")["id"]
    assert_error(alice.put(f"/v1/watchlists/{wid}", json={}), 422, "invalid_parameter")


def test_a_malformed_id_is_invalid_parameter(alice):
    assert_error(alice.get("/v1/watchlists/not-a-uuid"), 422, "invalid_parameter")


# ----------------------------------------------------------------------------- limits


def test_at_most_fifty_watchlists_per_account(alice):
    for i in range(MAX_WATCHLISTS):
        alice.create(f"w{i}")
    resp = alice.post("/v1/watchlists", json={"name": "one too many"})
    body = assert_error(resp, 422, "too_many_watchlists")
    assert str(MAX_WATCHLISTS) in body["message"]
    first = alice.get("/v1/watchlists").json()[0]["id"]
    assert alice.delete(f"/v1/watchlists/{first}").status_code == 204
    alice.create("room again")


def test_at_most_two_hundred_symbols_per_list(alice):
    resp = alice.post("/v1/watchlists", json={"name": "big", "symbols": MANY})
    assert_error(resp, 422, "too_many_symbols")
    wid = alice.create("big", MANY[:MAX_SYMBOLS])["id"]
    assert len(alice.get(f"/v1/watchlists/{wid}").json()["assets"]) == MAX_SYMBOLS
    resp = alice.post(f"/v1/watchlists/{wid}/symbols", json={"symbol": MANY[-1]})
    assert_error(resp, 422, "too_many_symbols")
    resp = alice.put(f"/v1/watchlists/{wid}", json={"symbols": MANY})
    assert_error(resp, 422, "too_many_symbols")


# -------------------------------------------------------------------------- isolation


WATCHLIST_ROUTES = [r for r in PROTECTED_ROUTES if "{watchlist_id}" in r[1]]
# Bodies that would succeed on the caller's own watchlist, so only scoping can refuse them.
BODIES = {
    ("PUT", "/v1/watchlists/{watchlist_id}"): {"name": "stolen", "symbols": ["TSLA"]},
    ("POST", "/v1/watchlists/{watchlist_id}/symbols"): {"symbol": "TSLA"},
}


@pytest.mark.parametrize("route", WATCHLIST_ROUTES, ids=route_id)
def test_another_accounts_watchlist_is_not_found(alice, bob, route):
    mine = alice.create("private", ["AAPL", "MSFT"])
    method, path = route
    url = fill(path, watchlist_id=mine["id"], symbol="AAPL")
    resp = getattr(bob, method.lower())(url, json=BODIES.get(route))
    assert_error(resp, 404, "watchlist_not_found")
    # The same request is fine for the owner, and the watchlist was untouched by bob.
    after = alice.get(f"/v1/watchlists/{mine['id']}").json()
    assert {k: after[k] for k in mine} == mine
    assert bob.get("/v1/watchlists").json() == []
    own = getattr(alice, method.lower())(url, json=BODIES.get(route))
    assert own.status_code in (200, 204), own.text


def test_watchlist_routes_are_all_covered():
    assert len(WATCHLIST_ROUTES) == 5


# ------------------------------------------------------------------ quotes and day change


def test_each_symbol_has_its_quote_and_day_change(alice, env):
    wid = alice.create("live", ["AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "VENUEONLY"])["id"]
    detail = alice.get(f"/v1/watchlists/{wid}").json()
    assets = {a["symbol"]: a for a in detail["assets"]}
    aapl = assets["AAPL"]
    assert aapl["quote"]["bid_price"] == "10.0000" and aapl["quote"]["ask_price"] == "10.0100"
    assert aapl["quote"]["stale"] is False
    assert (aapl["last_price"], aapl["previous_close"]) == ("105.0000", "100.0000")
    assert (aapl["change"], aapl["change_percent"]) == ("5.0000", "5.0000")
    msft = assets["MSFT"]  # Monday against the Friday before
    assert (msft["last_price"], msft["previous_close"], msft["change"]) == (
        "190.0000",
        "200.0000",
        "-10.0000",
    )
    assert msft["change_percent"] == "-5.0000"
    nvda = assets["NVDA"]  # Friday after Thanksgiving against Wednesday
    assert (nvda["previous_close"], nvda["change"], nvda["change_percent"]) == (
        "50.0000",
        "5.0000",
        "10.0000",
    )
    tsla = assets["TSLA"]  # no candle of the previous session: unknown, not zero
    assert tsla["last_price"] == "300.0000"
    assert (tsla["previous_close"], tsla["change"], tsla["change_percent"]) == (None, None, None)
    amzn = assets["AMZN"]  # a quote, but no trade on record
    assert amzn["quote"] is not None
    assert [amzn[k] for k in ("last_price", "previous_close", "change", "change_percent")] == [
        None
    ] * 4
    assert assets["VENUEONLY"]["quote"] is None, "only the NBBO is shown"


def test_previous_close_is_the_daily_candles_close(env):
    """The day change reads the same close as GET /v1/candles?interval=1d."""
    _, app = env
    candles = app.state.candles
    start = datetime(2026, 11, 23, 5, tzinfo=UTC)
    [monday] = candles.candles("AAPL", "1d", start, start + timedelta(days=1), 10)
    assert monday.close == Decimal("100.0000")
    assert day_changes(candles, ["AAPL"])["AAPL"].previous_close == monday.close
    assert day_changes(candles, []) == {}
    assert day_changes(candles, ["NOPE"])["NOPE"].last_price is None


@pytest.mark.parametrize(
    ("day", "previous"),
    [
        (date(2026, 11, 24), date(2026, 11, 23)),  # Tuesday -> Monday
        (date(2026, 11, 23), date(2026, 11, 20)),  # Monday -> Friday
        (date(2026, 11, 27), date(2026, 11, 25)),  # after Thanksgiving
        (date(2026, 11, 28), date(2026, 11, 27)),  # a Saturday -> Friday
        (date(2027, 1, 4), date(2026, 12, 31)),  # New Year's Day is a holiday
        (date(1990, 1, 8), date(1990, 1, 5)),  # before the calendar: weekdays
    ],
)
def test_previous_session(day, previous):
    assert previous_session(day) == previous


def test_unknown_ids_are_404(alice):
    assert_error(alice.get(f"/v1/watchlists/{uuid.uuid4()}"), 404, "watchlist_not_found")
    resp = alice.post(f"/v1/watchlists/{uuid.uuid4()}/symbols", json={"symbol": "AAPL"})
    assert_error(resp, 404, "watchlist_not_found")
