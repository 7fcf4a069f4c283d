"""The FastAPI edge against real Redis (database 13) and chDB (a temporary home), with the
data written straight through QuoteStore and CandleStore.

create_app opens the process-wide chDB client (infra.clickhouse.shared_clickhouse); this
module closes any other module's client first, and its own at the end, because chDB
allows one data directory per process.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from infra.clickhouse import release_shared_clickhouse
from infra.quote_store import QuoteStore
from infra.settings import Settings
from schemas.candles import MINUTE_NS, build_candles
from schemas.json_feed import format_time, parse_time
from schemas.marketdata import NBBO_VENUE, Quote, Status, Trade
from schemas.sale_conditions import eligibility

pytestmark = pytest.mark.services

T0 = 1_795_530_600_000_000_000  # 2026-11-24T14:30:00Z
D = Decimal
S = 1_000_000_000
RFC3339_NS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
NY = ZoneInfo("America/New_York")


def trade(symbol: str, tid: str, price: str, size: int, ns: int, conditions=("@",)) -> Trade:
    last, volume = eligibility(conditions)
    return Trade(symbol, "iex", tid, D(price), size, conditions, ns, ns, last, volume)


def quote(symbol, venue, bid, ask, event_ns, receive_ns, seq=0) -> Quote:
    return Quote(symbol, venue, D(bid), 100, D(ask), 300, event_ns, receive_ns, seq)


AAPL_TRADES = [
    trade("AAPL", str(i), f"{189 + i % 3}.{i:02d}00", 10 * (i + 1), T0 + i * 20 * S)
    for i in range(15)  # five minutes, three trades each
] + [trade("AAPL", "odd", "250.0000", 7, T0 + 5 * MINUTE_NS + 1, ("I",))]  # volume, no OHLC


def two_venue_quotes(symbol: str, now: int) -> list:
    """iex received now, nasdaq received 10 s ago, the NBBO, and a trading status."""
    return [
        quote(symbol, "iex", "189.1100", "189.1300", T0 + 2, now),
        quote(symbol, "nasdaq", "189.1000", "189.1200", T0 + 1, now - 10 * S),
        quote(symbol, NBBO_VENUE, "189.1100", "189.1200", T0 + 2, now, seq=2 * T0 + 3),
        Status(symbol, "iex", "trading", "", T0, now),
    ]


@pytest.fixture(scope="module")
def env(services: Settings, auth: dict[str, str], tmp_path_factory):
    release_shared_clickhouse()
    settings = Settings(
        home=tmp_path_factory.mktemp("api-home"), redis_port=services.redis_port, redis_db=13
    )
    quotes = QuoteStore(settings.redis)
    quotes.redis.flushdb()
    app = create_app(settings)
    now = time.time_ns()
    old = now - 10 * S
    quotes.apply(
        [
            *two_venue_quotes("AAPL", now),
            quote("MSFT", "nasdaq", "400.0000", "400.0500", T0 + 5, now),
            Status("MSFT", "nasdaq", "halted", "LUDP", T0 + 6, now),
            Status("MSFT", "iex", "trading", "", T0 + 6, now),
            quote("OLD", "iex", "1.0000", "1.0100", T0 + 9, old),
        ]
    )
    app.state.candles.apply(AAPL_TRADES)
    # Known only from candles (no quote in Redis).
    app.state.candles.apply([trade("CONLY", "1", "5.0000", 10, T0)])
    with TestClient(app, headers=auth) as client:
        yield client, settings, quotes, app.state.candles
    release_shared_clickhouse()


@pytest.fixture
def client(env) -> TestClient:
    return env[0]


def assert_error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return body


# ----------------------------------------------------------------------------- quotes


def test_quote_of_one_symbol(client, env):
    # Written now (not at module setup) so that "fresh" cannot age past 5 s on a slow run.
    env[2].apply(two_venue_quotes("QONE", time.time_ns()))
    resp = client.get("/v1/quotes/QONE")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"symbol", "as_of", "stale", "halted", "nbbo", "venues", "status"}
    assert body["symbol"] == "QONE"
    assert set(body["venues"]) == {"iex", "nasdaq"}, "the NBBO is not a venue"
    nbbo = body["nbbo"]
    assert nbbo == {
        "bid_price": "189.1100",
        "bid_size": 100,
        "ask_price": "189.1200",
        "ask_size": 300,
        "as_of": format_time(T0 + 2),
        "stale": False,
    }
    assert body["venues"]["iex"]["bid_price"] == "189.1100"
    assert body["venues"]["nasdaq"]["ask_price"] == "189.1200"
    for q in [nbbo, *body["venues"].values()]:
        assert RFC3339_NS.match(q["as_of"]), q["as_of"]
        assert all(isinstance(q[k], str) for k in ("bid_price", "ask_price")), "money is text"
        assert all(isinstance(q[k], int) for k in ("bid_size", "ask_size"))
    assert parse_time(body["venues"]["nasdaq"]["as_of"]) == T0 + 1, "nanoseconds kept"
    assert body["as_of"] == format_time(T0 + 2)
    assert body["status"] == {"iex": {"state": "trading", "reason": "", "as_of": format_time(T0)}}
    assert body["halted"] is False


def test_stale_when_received_more_than_five_seconds_ago(client, env):
    env[2].apply(two_venue_quotes("QTWO", time.time_ns()))
    body = client.get("/v1/quotes/QTWO").json()
    assert body["venues"]["iex"]["stale"] is False
    assert body["venues"]["nasdaq"]["stale"] is True
    assert body["stale"] is False, "the newest quote is fresh"
    old = client.get("/v1/quotes/OLD").json()
    assert old["stale"] is True and old["venues"]["iex"]["stale"] is True
    assert old["nbbo"] is None and old["halted"] is False


def test_halted_when_any_venue_reports_a_halt(client, env):
    _, _, quotes, _ = env
    body = client.get("/v1/quotes/MSFT").json()
    assert body["halted"] is True
    assert body["status"]["nasdaq"] == {
        "state": "halted",
        "reason": "LUDP",
        "as_of": format_time(T0 + 6),
    }
    quotes.apply([Status("MSFT", "nasdaq", "trading", "", T0 + 7, time.time_ns())])
    assert client.get("/v1/quotes/MSFT").json()["halted"] is False
    quotes.apply([Status("MSFT", "nasdaq", "halted", "LUDP", T0 + 6, time.time_ns())])
    assert client.get("/v1/quotes/MSFT").json()["halted"] is False, "an old halt is ignored"
    quotes.apply([Status("MSFT", "iex", "paused", "LUDP", T0 + 8, time.time_ns())])
    assert client.get("/v1/quotes/MSFT").json()["halted"] is True, "paused counts as halted"


def test_quotes_of_several_symbols(client):
    resp = client.get("/v1/quotes", params={"symbols": "AAPL,msft, OLD ,AAPL"})
    assert resp.status_code == 200, resp.text
    quotes = resp.json()["quotes"]
    assert list(quotes) == ["AAPL", "MSFT", "OLD"]
    assert quotes["AAPL"] == client.get("/v1/quotes/AAPL").json()
    assert quotes["MSFT"]["nbbo"] is None
    assert quotes["MSFT"]["venues"]["nasdaq"]["bid_price"] == "400.0000"


def test_unknown_symbols_answer_404(client):
    assert_error(client.get("/v1/quotes/ZZZZ"), 404, "symbol_not_found")
    body = assert_error(
        client.get("/v1/quotes", params={"symbols": "AAPL,ZZZZ,YYYY"}), 404, "symbol_not_found"
    )
    assert "ZZZZ" in body["message"] and "YYYY" in body["message"]
    assert_error(client.get("/v1/candles/ZZZZ"), 404, "symbol_not_found")
    assert_error(client.get("/v1/quotes/CONLY"), 404, "symbol_not_found")
    assert client.get("/v1/candles/CONLY").status_code == 200, "known from its candles"
    assert_error(client.get("/v2/nothing"), 404, "not_found")


@pytest.mark.parametrize("path", ["/v1/quotes/BAD!", "/v1/quotes/1ABC", "/v1/candles/A_B"])
def test_bad_ticker_is_invalid_symbol(client, path):
    assert_error(client.get(path), 422, "invalid_symbol")


def test_bad_ticker_in_a_list_is_invalid_symbol(client):
    assert_error(client.get("/v1/quotes", params={"symbols": "AAPL,B@D"}), 422, "invalid_symbol")
    assert_error(client.get("/v1/quotes", params={"symbols": ","}), 422, "invalid_parameter")
    assert_error(client.get("/v1/quotes"), 422, "invalid_parameter")
    many = ",".join(f"S{i}" for i in range(201))
    assert_error(client.get("/v1/quotes", params={"symbols": many}), 422, "too_many_symbols")


# ----------------------------------------------------------------------------- candles


@pytest.mark.parametrize(
    "params",
    [
        {"interval": "2m"},
        {"interval": ""},
        {"limit": 0},
        {"limit": 10_001},
        {"limit": "ten"},
        {"start": "yesterday"},
        {"start": "2026-13-01T00:00:00Z"},
        {"end": "2026-11-31T00:00:00Z"},
    ],
)
def test_bad_candle_parameters_are_invalid_parameter(client, params):
    body = assert_error(client.get("/v1/candles/AAPL", params=params), 422, "invalid_parameter")
    assert body["details"] and all({"location", "problem"} <= set(d) for d in body["details"])


@pytest.mark.parametrize(
    "params",
    [
        {"start": "2026-11-24T14:30:00"},
        {"end": "2026-11-24T14:30:00"},
        {"start": "2026-11-24"},
    ],
)
def test_times_without_offset_are_invalid_time(client, params):
    assert_error(client.get("/v1/candles/AAPL", params=params), 422, "invalid_time")


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2026-11-24T14:35:00Z", "2026-11-24T14:30:00Z"),
        ("2026-11-24T14:30:00Z", "2026-11-24T14:30:00Z"),
        ("2026-11-24T14:30:00Z", "2026-11-24T09:30:00-05:00"),  # the same instant
    ],
)
def test_empty_or_reversed_range_is_invalid_time_range(client, start, end):
    resp = client.get("/v1/candles/AAPL", params={"start": start, "end": end})
    assert_error(resp, 422, "invalid_time_range")


def expected_rows() -> list[dict]:
    rows = []
    for (_, start_ns), c in sorted(build_candles(AAPL_TRADES).items()):
        rows.append(
            {
                "start": datetime.fromtimestamp(start_ns // S, UTC),
                "open": None if c.open is None else str(c.open),
                "high": None if c.high is None else str(c.high),
                "low": None if c.low is None else str(c.low),
                "close": None if c.close is None else str(c.close),
                "volume": c.volume,
                "vwap": None if c.vwap is None else str(c.vwap),
                "trades": c.trades,
            }
        )
    return rows


def parsed(rows: list[dict]) -> list[dict]:
    return [r | {"start": datetime.fromisoformat(r["start"].replace("Z", "+00:00"))} for r in rows]


def test_candles_body_and_money_as_strings(client):
    resp = client.get("/v1/candles/AAPL", params={"interval": "1m"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["symbol"], body["interval"], body["next_start"]) == ("AAPL", "1m", None)
    assert parsed(body["candles"]) == expected_rows()
    assert len(body["candles"]) == 6
    last = body["candles"][-1]
    assert (last["open"], last["volume"], last["vwap"]) == (None, 7, "250.0000")
    for c in body["candles"]:
        for k in ("open", "high", "low", "close", "vwap"):
            assert c[k] is None or isinstance(c[k], str), (k, c[k])
        assert isinstance(c["volume"], int) and isinstance(c["trades"], int)
    # Lower-case symbols are accepted and normalized.
    assert client.get("/v1/candles/aapl").json() == body


def test_candles_pages_follow_next_start(client):
    params = {"interval": "1m", "limit": 2, "start": "2026-11-24T14:30:00Z"}
    params["end"] = "2026-11-24T15:00:00Z"
    pages, rows = 0, []
    while True:
        resp = client.get("/v1/candles/AAPL", params=params)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pages += 1
        rows += body["candles"]
        assert len(body["candles"]) <= 2
        if body["next_start"] is None:
            break
        assert datetime.fromisoformat(body["next_start"]) > datetime.fromisoformat(
            body["candles"][-1]["start"]
        )
        params["start"] = body["next_start"]
    assert pages == 4, "six candles in pages of two; a full page always points further"
    assert parsed(rows) == expected_rows()


def test_rollup_over_the_api(client):
    body = client.get(
        "/v1/candles/AAPL", params={"interval": "5m", "start": "2026-11-24T14:30:00Z"}
    ).json()
    [first, second] = body["candles"]
    rows = expected_rows()
    assert first["volume"] == sum(r["volume"] for r in rows[:5])
    assert first["open"] == rows[0]["open"] and first["close"] == rows[4]["close"]
    assert second["volume"] == 7 and second["open"] is None
    # A time zone offset is honoured: 09:30 New York is 14:30 UTC.
    same = client.get(
        "/v1/candles/AAPL", params={"interval": "5m", "start": "2026-11-24T09:30:00-05:00"}
    ).json()
    assert same == body


def test_daily_pages_across_a_dst_change_lose_no_day(client, env):
    _, _, _, candles = env
    days = [datetime(2026, 3, d, 10, 0, tzinfo=NY) for d in (6, 7, 8, 9, 10)]
    candles.apply(
        [trade("DST", str(i), "10.0000", 100, int(d.timestamp()) * S) for i, d in enumerate(days)]
    )
    params = {"interval": "1d", "limit": 3, "start": "2026-03-01T00:00:00Z"}
    params["end"] = "2026-03-31T00:00:00Z"
    whole = client.get("/v1/candles/DST", params=params | {"limit": 100}).json()["candles"]
    assert len(whole) == 5
    paged = []
    for _ in range(5):
        body = client.get("/v1/candles/DST", params=params).json()
        paged += body["candles"]
        if body["next_start"] is None:
            break
        params["start"] = body["next_start"]
    assert paged == whole


# ----------------------------------------------------------------------------- OpenAPI


def test_openapi_lists_every_route_with_its_responses(client):
    doc = client.get("/openapi.json").json()
    expected_models = {
        "/v1/quotes/{symbol}": "SymbolQuoteOut",
        "/v1/quotes": "QuotesOut",
        "/v1/candles/{symbol}": "CandlesOut",
    }
    assert {*expected_models, "/health"} <= set(doc["paths"])
    for path, model in expected_models.items():
        responses = doc["paths"][path]["get"]["responses"]
        assert {"200", "401", "404", "422", "429"} <= set(responses), path
        ok = responses["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{model}"}, path
        for status in ("401", "404", "422", "429"):
            err = responses[status]["content"]["application/json"]["schema"]
            assert err == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)
    assert "200" in doc["paths"]["/health"]["get"]["responses"]
    error_body = doc["components"]["schemas"]["ErrorBody"]
    assert {"code", "message"} <= set(error_body["required"])
    assert error_body["properties"]["code"]["type"] == "string"
    assert error_body["properties"]["message"]["type"] == "string"
    assert "HTTPValidationError" not in doc["components"]["schemas"], "one error shape"


def test_openapi_documents_money_as_strings(client):
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for name in ("bid_price", "ask_price"):
        assert schemas["QuoteOut"]["properties"][name]["type"] == "string"
    for name in ("open", "high", "low", "close", "vwap"):
        types = {s.get("type") for s in schemas["CandleOut"]["properties"][name]["anyOf"]}
        assert types == {"string", "null"}, name
    params = {p["name"]: p for p in doc["paths"]["/v1/candles/{symbol}"]["get"]["parameters"]}
    assert set(params) == {"symbol", "interval", "start", "end", "limit"}
    assert params["interval"]["schema"]["enum"] == ["1m", "5m", "15m", "1h", "1d"]
    assert (params["limit"]["schema"]["minimum"], params["limit"]["schema"]["maximum"]) == (
        1,
        10_000,
    )
