"""Price alerts through HTTP: the real app (TestClient), PostgreSQL, Redis (database 7) and
a temporary chDB holding Monday's trades (the previous close percent alerts are seeded
with). The app's clock is fixed at Tuesday 2026-11-24 10:00 New York.

The alerts flow is not running here: firings are recorded with infra.alerts.record_firing,
the flow's own sink, so the tests see exactly what PostgreSQL keeps and refuses.
"""

from __future__ import annotations

import time
import uuid
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import orjson
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from infra import alerts as alert_store
from infra import db
from infra.alerts import record_firing
from infra.clickhouse import release_shared_clickhouse
from infra.quote_store import QuoteStore
from infra.settings import Settings
from infra.topics import topics_of
from schemas.alerts import Firing, fire_id
from schemas.marketdata import NBBO_VENUE, Quote, Security, Trade
from tests.api_support import PROTECTED_ROUTES, fill
from tests.conftest import new_user

pytestmark = pytest.mark.services

REDIS_DB = 7
D = Decimal
NY = ZoneInfo("America/New_York")
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=NY)
SYMBOL, OTHER = "ALRTA", "ALRTB"
S = 1_000_000_000
MON_CLOSE_NS = int(datetime(2026, 11, 23, 15, 59, tzinfo=NY).timestamp()) * S
TUE_NS = int(NOW.timestamp()) * S


@pytest.fixture(scope="module")
def env(services: Settings, tmp_path_factory):
    release_shared_clickhouse()
    settings = Settings(
        home=tmp_path_factory.mktemp("alerts-home"),
        redis_port=services.redis_port,
        redis_db=REDIS_DB,
    )
    quotes = QuoteStore(settings.redis)
    quotes.redis.flushdb()
    ns = time.time_ns()
    quotes.apply(
        [
            Security(SYMBOL, "iex", 100, False, 1, 1),
            Security(OTHER, "iex", 100, False, 1, 1),
            Quote(SYMBOL, NBBO_VENUE, D("99.99"), 100, D("100.01"), 100, ns, ns, 2 * ns),
            Quote(OTHER, NBBO_VENUE, D("9.99"), 100, D("10.01"), 100, ns, ns, 2 * ns),
        ]
    )
    app = create_app(settings)
    app.state.clock = lambda: NOW
    # Monday's last regular trade of SYMBOL: the previous close a percent alert is seeded with.
    app.state.candles.apply(
        [
            Trade(SYMBOL, "iex", "m1", D("98.5000"), 100, ("@",), MON_CLOSE_NS - S, 0),
            Trade(SYMBOL, "iex", "m2", D("99.2500"), 100, ("@",), MON_CLOSE_NS, 0),
        ]
    )
    with TestClient(app) as client:
        yield client, settings
    release_shared_clickhouse()


class User:
    def __init__(self, client: TestClient, services: Settings) -> None:
        _, self.account, token = new_user(services, rate_limit=1_000_000)
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def __getattr__(self, method: str):
        def call(path: str, **kw):
            return self.client.request(method.upper(), path, headers=self.headers, **kw)

        return call

    def create(self, **body) -> dict:
        resp = self.post("/v1/alerts", json={"symbol": SYMBOL, "type": "price_above", **body})
        assert resp.status_code == 201, resp.text
        return resp.json()


@pytest.fixture
def user(env, services) -> User:
    return User(env[0], services)


def assert_error(resp, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == code, body
    assert body["message"]


def outbox_rows(settings: Settings, alert_id: str) -> list[dict]:
    with db.pool(settings.postgres).connection() as conn:
        rows = conn.execute(
            "SELECT key, payload FROM outbox WHERE topic = %s "
            "AND convert_from(payload, 'UTF8') LIKE %s ORDER BY id",
            (topics_of(settings).alerts, f"%{alert_id}%"),
        ).fetchall()
    return [{"key": k, **orjson.loads(bytes(p))} for k, p in rows]


def firing(alert: dict, account_id, at_ns: int, price: str = "100.5", key: str = "") -> Firing:
    return Firing(
        id=fire_id(alert["id"], alert["version"], key or f"t|iex|{at_ns}|{at_ns}"),
        alert_id=alert["id"],
        account_id=str(account_id),
        version=alert["version"],
        symbol=alert["symbol"],
        event_ns=at_ns,
        crossed="above",
        price=D(price),
        level=D(alert["price"]),
        source="trade",
        venue="iex",
        trade_id=str(at_ns),
        one_shot=not alert["recurring"],
        cooldown_s=alert["cooldown_s"],
    )


def record(settings: Settings, f: Firing):
    with db.pool(settings.postgres).connection() as conn:
        return record_firing(conn, f)


# ------------------------------------------------------------------------------ create


def test_create_read_and_list(env, user: User) -> None:
    _, settings = env
    a = user.create(price="101.5", note="breakout")
    assert a["symbol"] == SYMBOL and a["type"] == "price_above"
    assert (a["price"], a["percent"], a["direction"], a["source"]) == (
        "101.5000",
        None,
        None,
        "trade",
    )
    assert (a["status"], a["version"], a["fire_count"], a["last_fired_at"]) == (
        "active",
        1,
        0,
        None,
    )
    assert (a["recurring"], a["cooldown_s"], a["note"]) == (False, None, "breakout")
    assert a["created_at"].endswith("Z")
    assert user.get(f"/v1/alerts/{a['id']}").json() == a
    b = user.create(symbol=OTHER.lower(), type="price_below", price=9, recurring=True)
    assert (b["symbol"], b["cooldown_s"]) == (OTHER, 300)
    listed = user.get("/v1/alerts").json()
    assert [x["id"] for x in listed] == [b["id"], a["id"]], "newest first"
    only = user.get("/v1/alerts", params={"symbols": OTHER}).json()
    assert [x["id"] for x in only] == [b["id"]]
    # The definition went to the outbox in the same transaction, keyed by symbol.
    [row] = outbox_rows(settings, a["id"])
    assert row["key"] == SYMBOL and row["kind"] == "alert"
    assert row["alert"]["price"] == "101.5000" and row["alert"]["version"] == 1
    assert row["alert"]["account_id"] == str(user.account.id)


def test_a_percent_alert_is_seeded_with_the_previous_close(user: User) -> None:
    a = user.create(type="percent_change", percent="2.5", direction="down")
    assert (a["percent"], a["direction"], a["price"]) == ("2.5000", "down", None)
    assert (a["reference_close"], a["reference_day"]) == ("99.2500", "2026-11-23")
    either = user.create(symbol=OTHER, type="percent_change", percent=1)
    assert (either["direction"], either["reference_close"]) == ("either", None)  # no candles


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"symbol": "ZZNOPE", "type": "price_above", "price": "1"}, 422, "unknown_symbol"),
        ({"symbol": "bad sym", "type": "price_above", "price": "1"}, 422, "invalid_symbol"),
        ({"symbol": SYMBOL, "type": "price_near", "price": "1"}, 422, "invalid_type"),
        ({"symbol": SYMBOL, "type": "price_above"}, 422, "missing_price"),
        ({"symbol": SYMBOL, "type": "price_above", "price": "0"}, 422, "invalid_price"),
        ({"symbol": SYMBOL, "type": "price_above", "price": 1.00001}, 422, "invalid_price"),
        (
            {"symbol": SYMBOL, "type": "price_above", "price": "1", "percent": 2},
            422,
            "unexpected_percent",
        ),
        ({"symbol": SYMBOL, "type": "percent_change"}, 422, "missing_percent"),
        ({"symbol": SYMBOL, "type": "percent_change", "percent": "-1"}, 422, "invalid_percent"),
        (
            {"symbol": SYMBOL, "type": "percent_change", "percent": 1, "direction": "sideways"},
            422,
            "invalid_direction",
        ),
        (
            {"symbol": SYMBOL, "type": "price_above", "price": 1, "source": "vwap"},
            422,
            "invalid_source",
        ),
        (
            {"symbol": SYMBOL, "type": "price_above", "price": 1, "cooldown_s": 60},
            422,
            "unexpected_cooldown",
        ),
        (
            {
                "symbol": SYMBOL,
                "type": "price_above",
                "price": 1,
                "recurring": True,
                "cooldown_s": 0,
            },
            422,
            "invalid_cooldown",
        ),
        ({"symbol": SYMBOL, "type": "price_above", "price": "abc"}, 422, "invalid_parameter"),
        (
            {"symbol": SYMBOL, "type": "price_above", "price": 1, "extra": 1},
            422,
            "invalid_parameter",
        ),
    ],
)
def test_bad_alerts_are_refused_with_a_code(user: User, body: dict, status: int, code: str):
    assert_error(user.post("/v1/alerts", json=body), status, code)
    assert user.get("/v1/alerts").json() == [], "nothing was created"


def test_active_alerts_are_limited_per_account(user: User, monkeypatch) -> None:
    monkeypatch.setattr(alert_store, "MAX_ACTIVE", 2)
    first = user.create(price=1)
    user.create(price=2)
    body = {"symbol": SYMBOL, "type": "price_above", "price": 3}
    assert_error(user.post("/v1/alerts", json=body), 422, "too_many_alerts")
    assert user.delete(f"/v1/alerts/{first['id']}").status_code == 204
    assert user.post("/v1/alerts", json=body).status_code == 201, "canceled ones do not count"


# ------------------------------------------------------------------------------ change


def test_patch_changes_terms_and_tells_the_flow(env, user: User) -> None:
    _, settings = env
    a = user.create(price="100", recurring=True, cooldown_s=60)
    resp = user.patch(f"/v1/alerts/{a['id']}", json={"price": "105.25", "note": "higher"})
    assert resp.status_code == 200, resp.text
    b = resp.json()
    assert (b["price"], b["cooldown_s"], b["note"], b["version"]) == ("105.2500", 60, "higher", 2)
    for null in ({"recurring": None}, {"source": None}):  # a 422, not a NOT NULL violation
        assert_error(user.patch(f"/v1/alerts/{a['id']}", json=null), 422, "invalid_parameter")
    once = user.patch(f"/v1/alerts/{a['id']}", json={"recurring": False}).json()
    assert (once["recurring"], once["cooldown_s"], once["version"]) == (False, None, 3)
    noted = user.patch(f"/v1/alerts/{a['id']}", json={"note": "only words"}).json()
    assert (noted["note"], noted["version"]) == ("only words", 3), "no new version for a note"
    rows = outbox_rows(settings, a["id"])
    assert [(r["alert"]["version"], r["alert"]["price"]) for r in rows] == [
        (1, "100.0000"),
        (2, "105.2500"),
        (3, "105.2500"),
    ]
    path = f"/v1/alerts/{a['id']}"
    assert_error(user.patch(path, json={"percent": 1}), 422, "unexpected_percent")
    assert_error(user.patch(path, json={"symbol": OTHER}), 422, "invalid_parameter")
    assert_error(user.patch(path, json={"type": "price_below"}), 422, "invalid_parameter")
    assert_error(user.patch(path, json={}), 422, "invalid_parameter")
    assert_error(user.patch(path, json={"price": "-2"}), 422, "invalid_price")
    assert user.get(path).json()["version"] == 3, "refused changes change nothing"


def test_cancel_and_what_cannot_change_after(env, user: User) -> None:
    _, settings = env
    a = user.create(price="100")
    path = f"/v1/alerts/{a['id']}"
    assert user.delete(path).status_code == 204
    got = user.get(path).json()
    assert (got["status"], got["version"]) == ("canceled", 2) and got["canceled_at"]
    assert user.delete(path).status_code == 204, "idempotent"
    assert user.get(path).json()["version"] == 2
    assert_error(user.patch(path, json={"price": 1}), 422, "alert_not_active")
    assert [r["alert"]["status"] for r in outbox_rows(settings, a["id"])] == ["active", "canceled"]
    assert [x["status"] for x in user.get("/v1/alerts", params={"status": "canceled"}).json()] == [
        "canceled"
    ]
    assert user.get("/v1/alerts", params={"status": "active"}).json() == []


def test_another_accounts_alert_is_not_found(env, user: User, services) -> None:
    a = user.create(price="100")
    stranger = User(env[0], services)
    routes = [r for r in PROTECTED_ROUTES if "{alert_id}" in r[1]]
    assert {m for m, _ in routes} == {"GET", "PATCH", "DELETE"} and len(routes) == 4
    for method, path in routes:
        for alert_id in (a["id"], str(uuid.uuid4()), "not-a-uuid"):
            resp = getattr(stranger, method.lower())(
                fill(path, alert_id=alert_id),
                **({"json": {"price": 1}} if method == "PATCH" else {}),
            )
            assert_error(resp, 404, "alert_not_found")
    assert stranger.get("/v1/alerts").json() == []
    assert user.get(f"/v1/alerts/{a['id']}").json()["version"] == 1, "untouched"


# ------------------------------------------------------------------------------ firings


def test_a_one_shot_firing_is_stored_once_and_logged_for_the_stream(env, user: User) -> None:
    _, settings = env
    a = user.create(price="100.25")
    f = firing(a, user.account.id, TUE_NS + 123_456_789, price="100.30")
    event = record(settings, f)
    assert event is not None and event.account_id == user.account.id
    assert record(settings, f) is None, "the same crossing again: nothing new"
    assert record(settings, firing(a, user.account.id, TUE_NS + 5 * S)) is None, "triggered"
    got = user.get(f"/v1/alerts/{a['id']}").json()
    assert (got["status"], got["fire_count"]) == ("triggered", 1)
    assert got["last_fired_at"] == "2026-11-24T15:00:00.123456Z" and got["triggered_at"]
    [fire] = user.get(f"/v1/alerts/{a['id']}/fires").json()
    assert fire["id"] == f.id and fire["seq"] == event.seq
    assert (fire["price"], fire["level"], fire["crossed"], fire["event_ns"]) == (
        "100.3000",
        "100.2500",
        "above",
        TUE_NS + 123_456_789,
    )
    payload = orjson.loads(event.payload)
    assert payload["event"] == "alert" and payload["seq"] == event.seq
    assert payload["alert"] == got and payload["fire"]["id"] == f.id
    assert payload["at"] == fire["fired_at"]
    assert_error(user.delete(f"/v1/alerts/{a['id']}"), 422, "alert_not_cancelable")
    with db.pool(settings.postgres).connection() as conn:
        logged = conn.execute(
            "SELECT seq, event, order_id FROM account_events WHERE account_id = %s",
            (user.account.id,),
        ).fetchall()
    assert logged == [(event.seq, "alert", None)]


def test_recurring_firings_respect_the_cooldown_and_the_version(env, user: User) -> None:
    _, settings = env
    a = user.create(price="100", recurring=True, cooldown_s=60)
    acct = user.account.id
    assert record(settings, firing(a, acct, TUE_NS)) is not None
    assert record(settings, firing(a, acct, TUE_NS + 59 * S)) is None, "within the cool-down"
    assert record(settings, firing(a, acct, TUE_NS + 60 * S)) is not None
    b = user.patch(f"/v1/alerts/{a['id']}", json={"price": "101"}).json()
    assert record(settings, firing(a, acct, TUE_NS + 500 * S)) is None, "an older version"
    assert record(settings, firing(b, acct, TUE_NS + 500 * S)) is not None
    user.delete(f"/v1/alerts/{a['id']}")
    assert record(settings, firing(b, acct, TUE_NS + 900 * S)) is None, "canceled"
    fires = user.get(f"/v1/alerts/{a['id']}/fires").json()
    assert [(x["event_ns"] - TUE_NS) // S for x in fires] == [0, 60, 500]
    assert [x["alert_version"] for x in fires] == [1, 1, 2]
    assert [x["seq"] for x in fires] == [1, 2, 3]
    got = user.get(f"/v1/alerts/{a['id']}").json()
    assert (got["fire_count"], got["status"]) == (3, "canceled")
    assert date.fromisoformat(got["last_fired_at"][:10]) == date(2026, 11, 24)
