"""End of day on the real services (a private PostgreSQL database, a test-owned chDB):
day orders expired with their reservations released, snapshots equal to an independent
computation from the fills and the candles, a second run changing nothing, the desk's
late expiry a no-op, the scheduler closing each due day once, and the portfolio history
answering from the snapshots and the candles."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from infra.clickhouse import release_shared_clickhouse, shared_clickhouse
from infra.eod import cutoffs_for, run_eod
from infra.eod_scheduler import EodScheduler
from infra.market_view import FeedClock, clock_reading
from infra.quote_store import FEED_CLOCK_KEY
from schemas.eod import Change, day_end, due_days, holding_period, states_at
from tests.eod_support import Book, drop_private, private_settings, trade
from tests.ledger_support import check_invariants

NY = ZoneInfo("America/New_York")
DAY = date(2026, 11, 24)  # Tuesday; Monday 11-23 before it
CLOSE_CLOCK = day_end(DAY)  # 20:00 New York


def at(hh: int, mm: int, day: date = DAY) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=NY).astimezone(UTC)


# -- pure ---------------------------------------------------------------------------------


def test_due_days_catch_up_once_and_start_with_the_latest():
    fri_night = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)  # Fri 11-27 21:00 New York
    assert due_days(fri_night, []) == [date(2026, 11, 27)]  # nothing closed: the latest
    # Thanksgiving (11-26) is no trading day; 11-24 closed: 11-25 and 11-27 are due
    assert due_days(fri_night, [DAY]) == [date(2026, 11, 25), date(2026, 11, 27)]
    assert due_days(fri_night, [date(2026, 11, 27)]) == []
    before_end = datetime(2026, 11, 25, 0, 59, tzinfo=UTC)  # 11-24 19:59 New York
    assert due_days(before_end, [date(2026, 11, 20)]) == [date(2026, 11, 23)]


def test_holding_period_is_long_after_the_anniversary():
    assert holding_period(date(2025, 3, 1), date(2026, 3, 1)) == "short"
    assert holding_period(date(2025, 3, 1), date(2026, 3, 2)) == "long"
    assert holding_period(date(2024, 2, 29), date(2025, 2, 28)) == "short"
    assert holding_period(date(2024, 2, 29), date(2025, 3, 1)) == "long"


def test_states_at_counts_changes_up_to_each_time():
    t0 = at(10, 0)
    changes = [Change(t0, D(-100), "A", D(1)), Change(t0 + timedelta(hours=1), D(50))]
    got = states_at(D(950), {"A": D(1)}, changes, [t0 - timedelta(1), t0, t0 + timedelta(1)])
    assert got == [(D(1000), {}), (D(900), {"A": D(1)}), (D(950), {"A": D(1)})]


# -- on the services ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(services, tmp_path_factory):
    release_shared_clickhouse()
    settings = private_settings(services, tmp_path_factory.mktemp("eod-home"))
    ch = shared_clickhouse(settings)
    from infra.candle_store import CandleStore

    CandleStore(ch).apply(
        [
            trade("AAA", "98.0000", at(15, 30, date(2026, 11, 23))),
            trade("AAA", "100.0000", at(10, 0)),
            trade("AAA", "101.2500", at(12, 0)),
            trade("AAA", "101.5000", at(15, 59)),
            trade("AAA", "105.0000", at(16, 30)),  # after the close: not the closing price
            trade("BBB", "50.0000", at(11, 0)),
        ]
    )
    book = Book(settings)
    yield settings, book, ch
    release_shared_clickhouse()
    drop_private(services, settings)


@pytest.fixture(scope="module")
def day(env):
    """The ledger of the day, then EOD once: what the tests below check."""
    settings, book, ch = env
    a, token = book.user("100000")
    b, _ = book.user("500")
    book.trade_at(a, "AAA", "buy", "10", "99.5000", at(10, 1))
    book.trade_at(a, "BBB", "buy", "4", "50.0000", at(11, 0))
    book.trade_at(a, "AAA", "sell", "4", "101.0000", at(14, 0))
    day_buy = book.order(a, "AAA", "buy", "5", "90.0000")  # reserves 450
    gtc_buy = book.order(a, "BBB", "buy", "1", "40.0000", tif="gtc")
    day_sell = book.order(a, "BBB", "sell", "1", "60.0000")  # 1 share
    partial = book.order(a, "AAA", "buy", "2", "100.0000")
    book.fill(partial, a, "1", "100.0000", at(15, 0))  # half filled, rest expires
    # Placed after the close: held for the next session, so it stays open.
    next_session = book.order(b, "BBB", "buy", "1", "10.0000", placed_at=at(16, 30))
    report = run_eod(settings, DAY, clock=lambda: CLOSE_CLOCK, ch=ch)
    return {
        "a": a,
        "b": b,
        "token": token,
        "orders": (day_buy, gtc_buy, day_sell, partial),
        "next_session": next_session,
        "report": report,
    }


def _rows(book: Book, sql: str, *params):
    with book.pool.connection() as conn:
        return conn.execute(sql, params).fetchall()


def test_day_orders_expire_and_release_their_reservations(env, day):
    _settings, book, _ = env
    day_buy, gtc_buy, day_sell, partial = day["orders"]
    status = dict(_rows(book, "SELECT id, status FROM orders WHERE account_id = %s", day["a"]))
    assert status[day_buy] == status[day_sell] == status[partial] == "expired"
    assert status[gtc_buy] == "new"
    assert day["report"].ran_now and day["report"].expired_orders == 3
    (reserved,) = _rows(book, "SELECT reserved_cash FROM accounts WHERE id = %s", day["a"])
    assert reserved[0] == D("40.0000")  # the gtc buy only
    (held,) = _rows(
        book,
        "SELECT qty, reserved_qty FROM positions WHERE account_id = %s AND symbol = 'BBB'",
        day["a"],
    )
    assert held == (D(4), D(0))
    check_invariants(book.pool, day["a"])
    # The order taken after the close keeps working, and keeps its reservation.
    (after_close,) = _rows(book, "SELECT status FROM orders WHERE id = %s", day["next_session"])
    assert after_close == ("accepted",)
    (reserved,) = _rows(book, "SELECT reserved_cash FROM accounts WHERE id = %s", day["b"])
    assert reserved == (D("10.0000"),)


def _expected_a() -> dict[str, D]:
    """Account a from its fills alone: cash, positions at the 15:59 closes."""
    cash = D(100000) - 10 * D("99.5") - 4 * 50 + 4 * 101 - 1 * 100
    aaa, bbb = D(10 - 4 + 1), D(4)
    lmv = aaa * D("101.5") + bbb * 50
    cost = 6 * D("99.5") + 100 + 4 * 50
    equity = cash + lmv
    realized = 4 * (101 - D("99.5"))
    return {
        "equity": equity,
        "cash": cash,
        "long_market_value": lmv,
        "cost_basis": cost,
        "last_equity": D(0),  # the account did not exist at Monday's close
        "net_deposits": D(100000),
        "realized_pl": realized,
        "day_pl": equity - 100000,
    }


def test_the_books_equal_an_independent_computation(env, day):
    _settings, book, ch = env
    want = _expected_a()
    assert want["day_pl"] == want["realized_pl"] + 6 * 2 + 1 * D("1.5")  # unrealized today
    cols = list(want)
    (got,) = _rows(
        book,
        f"SELECT {', '.join(cols)}, positions FROM eod_accounts WHERE day = %s AND account_id = %s",
        DAY,
        day["a"],
    )
    assert dict(zip(cols, got[:-1], strict=True)) == want and got[-1] == 2
    (snap,) = ch.query(
        f"SELECT {', '.join(cols)} FROM portfolio_snapshots FINAL "
        "WHERE account_id = %(a)s AND day = %(d)s",
        {"a": day["a"], "d": DAY},
    )
    assert dict(zip(cols, snap, strict=True)) == want
    positions = ch.query(
        "SELECT symbol, qty, cost_basis, price, market_value FROM position_snapshots FINAL "
        "WHERE account_id = %(a)s AND day = %(d)s ORDER BY symbol",
        {"a": day["a"], "d": DAY},
    )
    assert positions == [
        ("AAA", D(7), 6 * D("99.5") + 100, D("101.5"), 7 * D("101.5")),
        ("BBB", D(4), D(200), D(50), D(200)),
    ]
    (b_row,) = _rows(
        book, "SELECT equity, day_pl FROM eod_accounts WHERE account_id = %s", day["b"]
    )
    assert b_row == (D(500), D(0))
    (last,) = _rows(
        book, "SELECT last_equity, last_equity_day FROM accounts WHERE id = %s", day["a"]
    )
    assert last == (want["equity"], DAY)
    run = _rows(book, "SELECT status, prices FROM eod_runs WHERE day = %s", DAY)
    assert run == [("done", {"AAA": "101.5000", "BBB": "50.0000"})]


def _state(book: Book, ch) -> tuple:
    pg = tuple(
        _rows(book, sql)
        for sql in (
            "SELECT * FROM eod_runs ORDER BY day",
            "SELECT * FROM eod_accounts ORDER BY day, account_id",
            "SELECT id, status, reserved_cash, reserved_qty, version FROM orders ORDER BY id",
            "SELECT id, cash, reserved_cash, last_equity, last_equity_day, event_seq "
            "FROM accounts ORDER BY id",
            "SELECT account_id, symbol, qty, reserved_qty FROM positions ORDER BY 1, 2",
            "SELECT count(*) FROM applied_events",
        )
    )
    clickhouse = tuple(
        ch.query(sql)
        for sql in (
            "SELECT * FROM portfolio_snapshots ORDER BY account_id, day",  # no FINAL: raw rows
            "SELECT * FROM position_snapshots ORDER BY account_id, day, symbol",
        )
    )
    return pg, clickhouse


def test_a_second_run_changes_nothing(env, day):
    settings, book, ch = env
    before = _state(book, ch)
    again = run_eod(settings, DAY, clock=lambda: CLOSE_CLOCK + timedelta(hours=3), ch=ch)
    assert not again.ran_now
    assert (again.expired_orders, again.accounts) == (3, day["report"].accounts)
    assert again.market_cutoff == day["report"].market_cutoff
    assert _state(book, ch) == before


def test_the_desks_late_expiry_is_a_no_op(env, day):
    _, book, _ = env
    day_buy, _, day_sell, _ = day["orders"]
    before = _state(book, env[2])[0][2:5]
    for order_id in (day_buy, day_sell):
        got = book.answer("expired", order_id, day["a"], CLOSE_CLOCK + timedelta(hours=9))
        assert got.outcome == "applied" and got.events == ()
    late_cancel = book.answer("canceled", day_buy, day["a"], CLOSE_CLOCK + timedelta(hours=9))
    assert late_cancel.outcome == "applied"
    assert _rows(book, "SELECT count(*) FROM ledger_anomalies") == [(0,)]
    assert _state(book, env[2])[0][2:5] == before
    check_invariants(book.pool, day["a"])


def test_eod_refuses_a_day_not_over_or_not_trading(env, day):
    settings, book, _ch = env
    api = create_app(settings)
    api.state.clock = lambda: at(15, 0, date(2026, 11, 25))
    _, operator = book.user(operator=True)
    with TestClient(api) as client:
        admin = {"Authorization": f"Bearer {operator}"}
        user = {"Authorization": f"Bearer {day['token']}"}
        early = client.post("/v1/admin/eod", json={"date": "2026-11-25"}, headers=admin)
        assert early.status_code == 409 and early.json()["code"] == "day_not_over"
        holiday = client.post("/v1/admin/eod", json={"date": "2026-11-26"}, headers=admin)
        assert holiday.status_code == 422 and holiday.json()["code"] == "not_a_trading_day"
        denied = client.post("/v1/admin/eod", json={"date": "2026-11-24"}, headers=user)
        assert denied.status_code == 403 and denied.json()["code"] == "forbidden"
        again = client.post("/v1/admin/eod", json={"date": "2026-11-24"}, headers=admin)
        assert again.status_code == 200 and again.json()["ran_now"] is False
        assert client.get("/v1/admin/eod/2026-11-24", headers=admin).json()["accounts"] == 2


def test_portfolio_history_daily_and_intraday(env, day):
    settings, _book, _ = env
    api = create_app(settings)
    api.state.clock = lambda: CLOSE_CLOCK
    auth = {"Authorization": f"Bearer {day['token']}"}
    want = _expected_a()
    with TestClient(api) as client:
        daily = client.get("/v1/portfolio/history?period=1W&timeframe=1D", headers=auth).json()
        assert daily["timestamp"] == [int(datetime(2026, 11, 24, tzinfo=NY).timestamp())]
        assert [D(e) for e in daily["equity"]] == [want["equity"]]
        assert [D(p) for p in daily["profit_loss"]] == [want["day_pl"]]
        assert D(daily["profit_loss_pct"][0]) == (want["day_pl"] / 100000).quantize(D("0.000001"))
        assert D(daily["base_value"]) == 0 and daily["timeframe"] == "1D"

        for bad in (
            "/v1/portfolio/history?date_end=9999-12-31&timeframe=1Min&period=1D",
            "/v1/portfolio/history?date_end=0001-01-01",
            "/v1/account/realized?end=9999-12-31",
        ):
            answer = client.get(bad, headers=auth)
            assert (answer.status_code, answer.json()["code"]) == (422, "invalid_parameter")

        hourly = client.get("/v1/portfolio/history?period=1D&timeframe=1H", headers=auth).json()
        # Independently: bars 09:30, 10:30 ... 15:30 New York, valued at their end.
        fills = [  # (time, cash, symbol, qty)
            (at(10, 1), -995, "AAA", 10),
            (at(11, 0), -200, "BBB", 4),
            (at(14, 0), 404, "AAA", -4),
            (at(15, 0), -100, "AAA", 1),
        ]
        trades = {"AAA": [(at(10, 1), D(100)), (at(12, 1), D("101.25")), (at(16, 0), D("101.5"))]}
        trades["BBB"] = [(at(11, 1), D(50))]
        starts = [at(9, 30) + timedelta(hours=h) for h in range(7)]
        equity = []
        for s in starts:
            end = min(s + timedelta(hours=1), at(16, 0))
            cash, qty = D(100000), {"AAA": D(0), "BBB": D(0)}
            for t, c, sym, q in fills:
                if t <= end:
                    cash += c
                    qty[sym] += q
            value = cash
            for sym, q in qty.items():
                known = [p for t, p in trades[sym] if t <= end]
                value += q * (known[-1] if known else D("99.5"))  # the fill's price
            equity.append(value)
        assert hourly["timestamp"] == [int(s.timestamp()) for s in starts]
        assert [D(e) for e in hourly["equity"]] == equity
        assert [D(p) for p in hourly["profit_loss"]] == [e - 100000 for e in equity]
        assert D(hourly["base_value"]) == 0 and hourly["base_value_asof"] == "2026-11-23"

        for query, code in (
            ("period=2D", "invalid_period"),
            ("period=1D&timeframe=2H", "invalid_timeframe"),
            ("period=1A&timeframe=1Min", "invalid_timeframe"),
            ("date_end=yesterday", "invalid_parameter"),
        ):
            bad = client.get(f"/v1/portfolio/history?{query}", headers=auth)
            assert bad.status_code == 422 and bad.json()["code"] == code, query


def test_the_cli_without_an_api_reports_the_first_run(env, day, tmp_path):
    settings, _, _ = env
    run = subprocess.run(
        [sys.executable, "-m", "infra.cli", "eod", "--date", "2026-11-24"],
        env={
            **os.environ,
            "TAPEFLOW_POSTGRES_URL": settings.postgres,
            "TAPEFLOW_HOME": str(tmp_path),  # its own chDB: the test holds the other one
            "TAPEFLOW_API_PORT": "9",  # nothing listens: in-process
            "TAPEFLOW_REDIS_DB": "11",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "already ran" in run.stdout and "nothing changed" in run.stdout


def test_the_scheduler_closes_each_due_day_once(env, day):
    settings, book, _ch = env
    friday_night = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)  # 11-27 21:00 New York
    scheduler = EodScheduler(settings, clock=lambda: friday_night, poll_s=0.2, first_delay_s=0)
    assert scheduler.due() == [date(2026, 11, 25), date(2026, 11, 27)]
    thread = threading.Thread(target=scheduler.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while scheduler.due() and time.monotonic() < deadline:
        time.sleep(0.2)
    scheduler.stop.set()
    thread.join(10)
    runs = _rows(book, "SELECT day, status FROM eod_runs ORDER BY day")
    assert runs == [(DAY, "done"), (date(2026, 11, 25), "done"), (date(2026, 11, 27), "done")]
    assert scheduler.tick() == []  # never twice


def test_a_feed_clock_without_feed_time_closes_nothing(env):
    """`tapeflow demo` starts with a feed clock before its replay: the wall it falls back
    to must not close the day the replay is about to play."""
    settings, _book, _ch = env
    feed_settings = settings.model_copy(update={"clock": "feed"})
    later = datetime(2026, 12, 5, 2, 0, tzinfo=UTC)  # days after any this module closes
    clock = FeedClock(redis.Redis.from_url(feed_settings.redis), lambda: later)
    redis.Redis.from_url(feed_settings.redis).delete(FEED_CLOCK_KEY)
    assert clock_reading(clock)[1] == "wall"
    assert EodScheduler(feed_settings, clock=clock).due() == []
    assert EodScheduler(settings, clock=lambda: later).due() != []  # the same time, a wall


def test_cut_offs_map_the_wall_but_not_a_replayed_feed():
    end = day_end(DAY)  # 20:00 New York
    ledger_now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    # Wall clock, a catch-up run two hours after the day's end: the ledger as it was then.
    wall = cutoffs_for(DAY, end + timedelta(hours=2), ledger_now)
    assert (wall.market, wall.ledger) == (end, ledger_now - timedelta(hours=2))
    # A manual run at 17:00 New York: both cut off now.
    early = cutoffs_for(DAY, end - timedelta(hours=3), ledger_now)
    assert (early.market, early.ledger) == (end - timedelta(hours=3), ledger_now)
    # A replay whose feed is already hours into the next day: the ledger as it is now.
    feed = cutoffs_for(DAY, end + timedelta(hours=15), ledger_now, feed=True)
    assert (feed.market, feed.ledger) == (end, ledger_now)


def test_the_scheduler_waits_a_poll_before_closing_a_day(env, day):
    """A feed that just passed a day's end may still have fills on their way to the
    ledger: a day is closed only once it has been due for a whole poll."""
    settings, book, _ch = env
    monday_night = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)  # 11-30 21:00 New York
    scheduler = EodScheduler(settings, clock=lambda: monday_night)
    due = scheduler.due()
    assert date(2026, 11, 30) in due
    assert scheduler.tick() == []
    assert not _rows(book, "SELECT day FROM eod_runs WHERE day = %s", date(2026, 11, 30))
    assert [r.day for r in scheduler.tick()] == due
