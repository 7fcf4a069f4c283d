"""GET /v1/clock and GET /v1/calendar through the real app (TestClient) on PostgreSQL (API
keys) and Redis (database 15), and the feed clock: the quotes store's monotonic event
time in Redis and the cached FeedClock that reads it.

The app's clock (app.state.clock) is set per test. Expected instants are written out
from the NYSE's 2026 schedule (New York is UTC-5 in November).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from infra.clickhouse import release_shared_clickhouse
from infra.market_view import FeedClock, clock_for, from_ns, wall_clock
from infra.quote_store import FEED_CLOCK_KEY, QuoteStore
from infra.settings import Settings
from schemas.sessions import calendar_range

pytestmark = pytest.mark.services
REDIS_DB = 15
NY = ZoneInfo("America/New_York")
RFC3339_NS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
T0 = 1_795_530_600_000_000_000  # 2026-11-24T14:30:00Z, 09:30 New York
S = 1_000_000_000


@pytest.fixture(scope="module")
def env(services: Settings, tmp_path_factory):
    release_shared_clickhouse()
    settings = Settings(
        home=tmp_path_factory.mktemp("clock-home"),
        redis_port=services.redis_port,
        redis_db=REDIS_DB,
    )
    app = create_app(settings)
    with TestClient(app) as client:
        yield client, app, settings
    release_shared_clickhouse()


@pytest.fixture
def client(env, auth) -> TestClient:
    client = env[0]
    client.headers.update(auth)
    return client


@pytest.fixture
def store(env) -> QuoteStore:
    store = QuoteStore(env[2].redis)
    store.redis.delete(FEED_CLOCK_KEY)
    return store


@contextmanager
def clock_at(env, when) -> Iterator[None]:
    app = env[1]
    app.state.clock = when if callable(when) else (lambda: when)
    try:
        yield
    finally:
        app.state.clock = wall_clock


def clock(env, client, when) -> dict:
    with clock_at(env, when):
        r = client.get("/v1/clock")
    assert r.status_code == 200, r.text
    return r.json()


def calendar(env, client, when=datetime(2026, 11, 24, 10, tzinfo=NY), **params):
    with clock_at(env, when):
        return client.get("/v1/calendar", params=params)


# ---------------------------------------------------------------- GET /v1/clock


@pytest.mark.parametrize(
    ("when", "session", "is_open", "next_open", "next_close", "day"),
    [
        (
            datetime(2026, 11, 24, 8, 15, tzinfo=NY),
            "pre",
            False,
            "2026-11-24T14:30:00",
            "2026-11-24T21:00:00",
            "2026-11-24",
        ),
        (
            datetime(2026, 11, 24, 10, 0, tzinfo=NY),
            "regular",
            True,
            "2026-11-25T14:30:00",
            "2026-11-24T21:00:00",
            "2026-11-24",
        ),
        (
            datetime(2026, 11, 24, 17, 0, tzinfo=NY),
            "post",
            False,
            "2026-11-25T14:30:00",
            "2026-11-25T21:00:00",
            "2026-11-24",
        ),
        (  # Thanksgiving: closed all day; next is the half day
            datetime(2026, 11, 26, 11, 0, tzinfo=NY),
            "closed",
            False,
            "2026-11-27T14:30:00",
            "2026-11-27T18:00:00",
            "2026-11-27",
        ),
        (  # the half day closes at 13:00 New York
            datetime(2026, 11, 27, 12, 0, tzinfo=NY),
            "regular",
            True,
            "2026-11-30T14:30:00",
            "2026-11-27T18:00:00",
            "2026-11-27",
        ),
        (
            datetime(2026, 11, 27, 14, 0, tzinfo=NY),
            "post",
            False,
            "2026-11-30T14:30:00",
            "2026-11-30T21:00:00",
            "2026-11-27",
        ),
        (  # Saturday
            datetime(2026, 11, 28, 12, 0, tzinfo=NY),
            "closed",
            False,
            "2026-11-30T14:30:00",
            "2026-11-30T21:00:00",
            "2026-11-30",
        ),
    ],
)
def test_the_clock_at_fixed_times(env, client, when, session, is_open, next_open, next_close, day):
    body = clock(env, client, when)
    assert set(body) == {
        "timestamp",
        "is_open",
        "next_open",
        "next_close",
        "session",
        "trading_day",
        "source",
    }
    assert body["timestamp"] == when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000000000Z")
    assert (body["session"], body["is_open"], body["source"]) == (session, is_open, "wall")
    assert body["next_open"] == f"{next_open}.000000000Z"
    assert body["next_close"] == f"{next_close}.000000000Z"
    assert body["trading_day"]["date"] == day
    for key in ("timestamp", "next_open", "next_close"):
        assert RFC3339_NS.match(body[key]), body[key]


def test_the_clock_gives_the_trading_days_bounds_by_session(env, client):
    body = clock(env, client, datetime(2026, 11, 27, 9, 0, tzinfo=NY))
    assert body["session"] == "pre"
    assert body["trading_day"] == {
        "date": "2026-11-27",
        "open": "09:30",
        "close": "13:00",
        "session_open": "04:00",
        "session_close": "17:00",
        "open_utc": "2026-11-27T14:30:00.000000000Z",
        "close_utc": "2026-11-27T18:00:00.000000000Z",
        "session_open_utc": "2026-11-27T09:00:00.000000000Z",
        "session_close_utc": "2026-11-27T22:00:00.000000000Z",
        "early_close": True,
    }


def test_clock_start_shifts_the_wall(env, client):
    shifted = clock_for(Settings(clock_start=datetime(2026, 11, 28, 17, 0, tzinfo=UTC)))
    body = clock(env, client, shifted)
    assert body["source"] == "wall"
    assert body["timestamp"].startswith("2026-11-28T17:0"), "runs on from its start"
    assert body["session"] == "closed" and body["next_open"] == "2026-11-30T14:30:00.000000000Z"


# ---------------------------------------------------------------- the feed clock


def test_the_feed_clock_moves_only_forward_in_the_same_write(store):
    assert store.feed_ns() is None
    assert store.write([], [], feed_ns=T0 + 5) == 0
    assert store.feed_ns() == T0 + 5
    store.write([], [], feed_ns=T0 + 4)
    assert store.feed_ns() == T0 + 5, "an older event never moves it back"
    store.write([], [], feed_ns=T0 + 10 * S)
    assert store.feed_ns() == T0 + 10 * S
    store.write([], [("trades:AAPL", b"{}")])  # without a feed time: untouched
    assert store.feed_ns() == T0 + 10 * S


def test_feed_clock_falls_back_to_the_wall_until_a_feed_time_exists(store):
    fallback = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    feed = FeedClock(store.redis, lambda: fallback, ttl_s=0)
    assert feed.read() == (fallback, "wall")
    store.write([], [], feed_ns=T0 + 123_456_789)
    assert feed.read() == (datetime(2026, 11, 24, 14, 30, 0, 123456, tzinfo=UTC), "feed")
    assert feed() == from_ns(T0 + 123_456_789)
    store.write([], [], feed_ns=T0)
    assert feed() == from_ns(T0 + 123_456_789), "never back"
    store.redis.delete(FEED_CLOCK_KEY)
    assert feed() == from_ns(T0 + 123_456_789), "nor back to the wall in this process"


def test_feed_clock_reads_redis_at_most_once_per_ttl(store):
    store.write([], [], feed_ns=T0)
    feed = FeedClock(store.redis, wall_clock, ttl_s=3600)
    assert feed() == from_ns(T0)
    store.write([], [], feed_ns=T0 + 60 * S)
    assert feed() == from_ns(T0), "cached: no round trip per call"
    assert FeedClock(store.redis, wall_clock, ttl_s=3600)() == from_ns(T0 + 60 * S)


def test_feed_clock_keeps_its_time_when_redis_is_unreachable():
    dead = redis.Redis(port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    fallback = datetime(2026, 11, 24, 15, tzinfo=UTC)
    assert FeedClock(dead, lambda: fallback, ttl_s=0).read() == (fallback, "wall")


def test_settings_choose_the_clock(services):
    assert clock_for(Settings()) is wall_clock
    feed = clock_for(Settings(clock="feed", redis_port=services.redis_port, redis_db=REDIS_DB))
    assert isinstance(feed, FeedClock)
    assert isinstance(
        clock_for(Settings(clock="feed", clock_start="2026-11-24T15:00:00Z")), FeedClock
    )
    with pytest.raises(ValueError):
        Settings(clock="exchange")


def test_get_clock_answers_from_the_feed(env, client, store):
    store.write([], [], feed_ns=T0 + 90 * 60 * S)  # 11:00 New York
    body = clock(env, client, FeedClock(store.redis, wall_clock, ttl_s=0))
    assert body["source"] == "feed"
    assert body["timestamp"] == "2026-11-24T16:00:00.000000000Z"
    assert body["session"] == "regular" and body["is_open"] is True


# ---------------------------------------------------------------- GET /v1/calendar


def test_calendar_across_the_holiday_and_the_half_day(env, client):
    r = calendar(env, client, start="2026-11-24", end="2026-11-30")
    assert r.status_code == 200, r.text
    days = r.json()
    assert [d["date"] for d in days] == ["2026-11-24", "2026-11-25", "2026-11-27", "2026-11-30"]
    assert [(d["open"], d["close"], d["early_close"]) for d in days] == [
        ("09:30", "16:00", False),
        ("09:30", "16:00", False),
        ("09:30", "13:00", True),
        ("09:30", "16:00", False),
    ]
    assert days[0] == {
        "date": "2026-11-24",
        "open": "09:30",
        "close": "16:00",
        "session_open": "04:00",
        "session_close": "20:00",
        "open_utc": "2026-11-24T14:30:00.000000000Z",
        "close_utc": "2026-11-24T21:00:00.000000000Z",
        "session_open_utc": "2026-11-24T09:00:00.000000000Z",
        "session_close_utc": "2026-11-25T01:00:00.000000000Z",
        "early_close": False,
    }
    assert days[2]["close_utc"] == "2026-11-27T18:00:00.000000000Z"


def test_calendar_of_one_closed_day_is_empty(env, client):
    r = calendar(env, client, start="2026-11-26", end="2026-11-26")
    assert r.status_code == 200 and r.json() == []


def test_calendar_defaults_to_a_year_from_the_clocks_today(env, client):
    r = calendar(env, client, when=datetime(2026, 11, 26, 12, tzinfo=NY))
    assert r.status_code == 200, r.text
    dates = [d["date"] for d in r.json()]
    last = min(calendar_range()[1], datetime(2027, 11, 26).date())
    assert dates[0] == "2026-11-27", "from the clock's New York date (a holiday here)"
    assert dates[-1] <= last.isoformat() and len(dates) > 200
    assert dates == sorted(set(dates))


def test_calendar_with_only_one_end_fills_the_other(env, client):
    ending = calendar(env, client, end="2026-11-30").json()
    assert ending[-1]["date"] == "2026-11-30" and ending[0]["date"] >= "2025-11-30"
    assert len(ending) > 200
    starting = calendar(env, client, start="2026-11-27").json()
    assert starting[0]["date"] == "2026-11-27" and starting[-1]["date"] <= "2027-11-27"


def test_a_whole_leap_year_fits(env, client):
    r = calendar(env, client, start="2027-01-01", end="2027-01-01")
    assert r.status_code == 200 and r.json() == []  # New Year's Day
    r = calendar(env, client, start="2026-01-01", end="2027-01-01")  # 366 days
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"start": "2026-11-30", "end": "2026-11-24"}, "invalid_date_range"),
        ({"start": "2026-01-01", "end": "2027-01-02"}, "date_range_too_long"),
        ({"start": "2026-13-01"}, "invalid_date"),
        ({"start": "tomorrow"}, "invalid_date"),
        ({"end": "20261124"}, "invalid_date"),
        ({"end": "2026-11-24T00:00:00Z"}, "invalid_date"),
        ({"start": "1990-01-02", "end": "1990-01-31"}, "outside_calendar"),
        ({"start": "2100-01-04"}, "outside_calendar"),
        ({"end": "1990-01-31"}, "outside_calendar"),
    ],
)
def test_calendar_errors(env, client, params, code):
    r = calendar(env, client, **params)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == code
    assert r.json()["message"]


def test_both_routes_need_a_key(env):
    bare = TestClient(env[1])
    for path in ("/v1/clock", "/v1/calendar"):
        assert bare.get(path).status_code == 401
