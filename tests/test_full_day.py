"""A whole trading day through `tapeflow run`, open to close with a halt (issue 6 item 5).

A simulated 2026-11-24 session (three symbols, two venues, 09:30-16:00 New York, one
symbol halted for a few minutes) is cut at noon and in the middle of the halt. Resting
limit buys are placed before the morning is replayed, limit sells of part of each
position before the afternoon, a marketable buy of the halted symbol while it is
halted (it must wait for the resumption), and a day order that can never fill rests
all day. Then end of day runs (twice), and reconciliation.

Everything asserted is computed here independently: cash, positions and realized gains
from the fills (FIFO), the closing prices from candles rebuilt from the recording files,
the halt window from the recording's status messages.
"""

from __future__ import annotations

import bisect
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, date, datetime
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

import httpx
import pytest

from infra import accounts, api_keys, db
from infra.ledger import Ledger
from infra.quote_store import QuoteStore
from infra.recording import RecordingWriter, read_recording
from infra.replay import replay
from infra.simulate import write_session
from schemas.marketdata import NBBO_VENUE, Quote, Security, Status, utc_to_ns
from tests.conftest import ROOT, Pipeline, new_user
from tests.e2e_support import expected_candles, parse_recording, until
from tests.eod_support import drop_private, private_settings

pytestmark = pytest.mark.services
DAY = date(2026, 11, 24)
NOON_NS = int(datetime(2026, 11, 24, 17, 0, tzinfo=UTC).timestamp()) * 10**9  # 12:00 NY
CLOSE_NS = int(datetime(2026, 11, 24, 21, 0, tzinfo=UTC).timestamp()) * 10**9  # 16:00 NY
CENT, MONEY = Decimal("0.01"), Decimal("0.0001")
DEPOSIT = Decimal("100000")
BUY_QTY, SELL_QTY = Decimal("10"), Decimal("6")


def _split(paths: dict[str, Path], out: Path, cuts: list[int]) -> list[dict[str, Path]]:
    """Each venue's recording cut at the given event times (ns) into consecutive parts."""
    parts: list[dict[str, Path]] = [{} for _ in range(len(cuts) + 1)]
    for venue, path in paths.items():
        names = [out / f"part{n}-{path.name}" for n in range(len(parts))]
        writers = [RecordingWriter(name) for name in names]
        for rec in read_recording(path):
            writers[bisect.bisect_right(cuts, rec.event_ns)].write(rec.payload)
        for n, (writer, name) in enumerate(zip(writers, names, strict=True)):
            writer.close()
            parts[n][venue] = name
    return parts


def _venue_quotes(paths: dict[str, Path]) -> list[Quote]:
    out = []
    for venue, path in paths.items():
        events, _ = parse_recording(path, venue)
        out += [e for e in events if isinstance(e, Quote) and e.venue != NBBO_VENUE]
    return out


def _median(values: list[Decimal]) -> Decimal:
    return Decimal(statistics.median_low(values)).quantize(CENT)


def _halt_windows(paths: dict[str, Path]) -> dict[str, list[tuple[int, int]]]:
    """(halted from, trading again from) per symbol, from any venue's status messages."""
    statuses = []
    for venue, path in paths.items():
        events, _ = parse_recording(path, venue)
        statuses += [e for e in events if isinstance(e, Status)]
    windows: dict[str, list[tuple[int, int]]] = defaultdict(list)
    start: dict[str, int] = {}
    for s in sorted(statuses, key=lambda s: s.event_ns):
        if s.state in ("halted", "paused"):
            start.setdefault(s.symbol, s.event_ns)
        elif s.symbol in start:
            windows[s.symbol].append((start.pop(s.symbol), s.event_ns))
    return windows


def _closing_prices(paths: dict[str, Path]) -> dict[str, Decimal]:
    """The close of each symbol's last regular-session minute, from candles built here."""
    out = {}
    for symbol, candles in expected_candles(paths).items():
        regular = [c for c in candles if c.start_ns < CLOSE_NS and c.close is not None]
        out[symbol] = regular[-1].close
    return out


def _fifo(fills: list[tuple]) -> tuple[dict[str, Decimal], Decimal, list[tuple]]:
    """From (symbol, side, qty, price) in execution order: open qty per symbol, cash spent
    net, and the closed lots (symbol, qty, proceeds, cost basis)."""
    lots: dict[str, list[list[Decimal]]] = defaultdict(list)
    cash, closed = Decimal(0), []
    for symbol, side, qty, price in fills:
        if side == "buy":
            lots[symbol].append([qty, price])
            cash -= qty * price
            continue
        cash += qty * price
        left = qty
        while left > 0:
            lot = lots[symbol][0]
            take = min(left, lot[0])
            closed.append((symbol, take, take * price, take * lot[1]))
            lot[0] -= take
            left -= take
            if lot[0] == 0:
                lots[symbol].pop(0)
    held = {s: sum((q for q, _ in ls), Decimal(0)) for s, ls in lots.items()}
    return held, cash, closed


@pytest.fixture(scope="module")
def session_files(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("fullday")
    return write_session(out, date=DAY, symbols=3, seed=11, minutes=390, start="09:30")


@pytest.fixture
def ledger_db(services, tmp_path):
    """A database of this test's own: end of day closes the books of every account in its
    database, and reconciliation compares all of that day's executions."""
    settings = private_settings(services, tmp_path / "db-home")
    db.migrate(settings)
    yield settings
    drop_private(services, settings)


def _intraday_equity(
    at: int, fills: list[tuple], candles: dict, deposit: Decimal
) -> Decimal | None:
    """Equity at epoch second `at`: cash and shares from the fills executed by then, each
    symbol at the close of its last 1-minute candle ended by then."""
    cash, held = deposit, defaultdict(Decimal)
    for symbol, side, qty, price, executed_at in fills:
        if executed_at.timestamp() <= at:
            sign = 1 if side == "buy" else -1
            cash -= sign * qty * price
            held[symbol] += sign * qty
    value = cash
    for symbol, qty in held.items():
        if qty:
            ended = [c for c in candles[symbol] if c.start_ns // 10**9 + 60 <= at and c.close]
            if not ended:
                return None
            value += qty * ended[-1].close
    return value


def _cli(pipeline: Pipeline, settings, *args: str, token: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **pipeline.env,
        "TAPEFLOW_POSTGRES_URL": settings.postgres,
        "TAPEFLOW_TOKEN": token,
    }
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_full_day_replay_agrees_with_the_fills(pipeline: Pipeline, ledger_db, session_files):
    halts = _halt_windows(session_files)
    assert len(halts) == 1, "the simulated day has one halted symbol"
    ((halted, [(halt_start, resumed)]),) = halts.items()
    assert halt_start > NOON_NS, "the halt is in the afternoon"
    mid_halt = (halt_start + resumed) // 2
    morning, *afternoon = _split(session_files, session_files["iex"].parent, [NOON_NS, mid_halt])
    quotes_am = _venue_quotes(morning)
    pm = [q for part in afternoon for q in _venue_quotes(part)]
    symbols = sorted({q.symbol for q in quotes_am})
    assert len(symbols) == 3 and halted in symbols

    # The feed's clock; 09:30 New York until the first feed time (orders work at once).
    pipeline.env["TAPEFLOW_CLOCK"] = "feed"
    pipeline.env["TAPEFLOW_CLOCK_START"] = "2026-11-24T14:30:00Z"
    pipeline.env["TAPEFLOW_POSTGRES_URL"] = ledger_db.postgres
    ns = time.time_ns()
    first = {s: next(q for q in quotes_am if q.symbol == s) for s in symbols}
    QuoteStore(pipeline.settings.redis).apply(
        [Security(s, "iex", 100, False, ns, ns) for s in symbols]
        + [
            Quote(s, NBBO_VENUE, q.bid_price, 100, q.ask_price, 100, ns, ns, ns)
            for s, q in first.items()
        ]
    )
    _, account, token = new_user(ledger_db, rate_limit=10_000)
    pool = db.pool(ledger_db.postgres)
    operator, _ = accounts.create_user(pool, "ops@full-day.test", "Operator", is_operator=True)
    _, operator_key = api_keys.create_key(pool, operator.id, "eod")
    operator_token = str(operator_key)
    Ledger(pool, pipeline.topics).deposit(account.id, DEPOSIT)
    pipeline.start()
    api = httpx.Client(
        base_url=pipeline.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )

    def place(symbol: str, side: str, qty: Decimal, limit: Decimal, tif: str) -> str:
        body = {
            "symbol": symbol,
            "side": side,
            "type": "limit",
            "time_in_force": tif,
            "qty": str(qty),
            "limit_price": str(limit),
        }
        answer = api.post("/v1/orders", json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()["id"]

    def status(order_id: str) -> str:
        return api.get(f"/v1/orders/{order_id}").json()["status"]

    def working(orders: list[str]) -> bool:  # acknowledged by its desk (or done already)
        return all(status(o) in ("new", "partially_filled", "filled") for o in orders)

    def replay_all(paths: dict[str, Path]) -> None:
        for venue, path in paths.items():
            replay(path, venue, pipeline.settings.bootstrap, None, pipeline.topics.raw(venue))

    # Morning: a buy per symbol at its median morning ask (crossed many times), and a
    # day order at half the lowest ask, which never fills.
    buys = [
        place(s, "buy", BUY_QTY, _median([q.ask_price for q in quotes_am if q.symbol == s]), "gtc")
        for s in symbols
    ]
    low = min(q.ask_price for q in quotes_am if q.symbol == symbols[0])
    never = place(symbols[0], "buy", Decimal(1), (low / 2).quantize(CENT, ROUND_DOWN), "day")
    until(lambda: working([*buys, never]))
    replay_all(morning)
    until(lambda: all(status(o) == "filled" for o in buys))

    # Afternoon: sell part of each position at its median afternoon bid.
    sells = [
        place(s, "sell", SELL_QTY, _median([q.bid_price for q in pm if q.symbol == s]), "gtc")
        for s in symbols
    ]
    until(lambda: working(sells))
    replay_all(afternoon[0])

    # Inside the halt: a market order is refused; a limit buy far through the last ask
    # is taken, and waits for the resumption.
    until(lambda: api.get(f"/v1/quotes/{halted}").json()["halted"])
    market = {"symbol": halted, "side": "buy", "type": "market", "time_in_force": "day", "qty": "1"}
    refused = api.post("/v1/orders", json=market)
    assert (refused.status_code, refused.json()["code"]) == (422, "symbol_halted")
    last_ask = max(q.ask_price for q in pm if q.symbol == halted and q.event_ns < halt_start)
    through = place(halted, "buy", Decimal(1), (last_ask * Decimal("1.05")).quantize(CENT), "day")
    until(lambda: working([through]))
    time.sleep(1)  # the desk has it; nothing may fill it until the feed resumes trading
    held_back = api.get(f"/v1/orders/{through}").json()
    assert (held_back["status"], held_back["filled_qty"]) == ("new", "0.000000")
    replay_all(afternoon[1])
    until(lambda: all(status(o) == "filled" for o in [*sells, through]))

    with pool.connection() as conn:
        fills = conn.execute(
            "SELECT symbol, side, qty, price, executed_at FROM executions "
            "WHERE account_id = %s ORDER BY executed_at, id",
            (account.id,),
        ).fetchall()
    held, cash_flow, closed = _fifo([f[:4] for f in fills])
    assert held == {s: BUY_QTY - SELL_QTY + (s == halted) for s in symbols}

    # The halted symbol never filled while halted; the buy taken in the halt filled after.
    resumed_us = resumed // 1000 * 1000  # the ledger keeps microseconds
    during = [f for f in fills if f[0] == halted and halt_start <= utc_to_ns(f[4]) < resumed_us]
    assert not during, f"{halted} filled during its halt"
    with pool.connection() as conn:
        (through_at,) = conn.execute(
            "SELECT executed_at FROM executions WHERE order_id = %s", (through,)
        ).fetchone()
    assert utc_to_ns(through_at) >= resumed_us

    closes = _closing_prices(session_files)
    equity = (DEPOSIT + cash_flow + sum(held[s] * closes[s] for s in symbols)).quantize(MONEY)
    realized = sum(p - c for _, _, p, c in closed)

    # End of day values positions at the candles' closes: wait until the candles flow
    # has the whole afternoon (the fills came long before the feed's end).
    def last_close(symbol: str) -> Decimal | None:
        params = {"interval": "1m", "start": "2026-11-24T20:59:00Z", "end": "2026-11-24T21:00:00Z"}
        rows = api.get(f"/v1/candles/{symbol}", params=params).json()["candles"]
        return Decimal(rows[0]["close"]) if rows and rows[0]["close"] else None

    until(lambda: all(last_close(s) == closes[s] for s in symbols))

    # End of day, through the README's command (the running API does it: it owns chDB).
    ran = _cli(pipeline, ledger_db, "eod", "--date", DAY.isoformat(), token=operator_token)
    assert ran.returncode == 0, ran.stderr + ran.stdout
    assert api.get(f"/v1/orders/{never}").json()["status"] == "expired"
    money = api.get("/v1/account").json()
    assert Decimal(money["reserved_cash"]) == 0
    assert Decimal(money["cash"]) == (DEPOSIT + cash_flow).quantize(MONEY)

    with pool.connection() as conn:
        books = conn.execute(
            "SELECT equity, cash, realized_pl FROM eod_accounts WHERE account_id = %s AND day = %s",
            (account.id, DAY),
        ).fetchone()
    assert books == (equity, (DEPOSIT + cash_flow).quantize(MONEY), realized.quantize(MONEY))

    daily = api.get(
        "/v1/portfolio/history",
        params={"period": "1W", "timeframe": "1D", "date_end": "2026-11-24"},
    ).json()
    assert Decimal(daily["equity"][-1]) == equity
    assert daily["timestamp"][-1] == int(datetime(2026, 11, 24, 5, 0, tzinfo=UTC).timestamp())

    intraday = api.get(
        "/v1/portfolio/history",
        params={"period": "1D", "timeframe": "5Min", "date_end": "2026-11-24"},
    ).json()
    candles = expected_candles(session_files)
    points = [
        (at, Decimal(value))
        for at, value in zip(intraday["timestamp"], intraday["equity"], strict=True)
        if value is not None
    ]
    assert len(points) >= 70  # 09:30-16:00 in 5-minute bars
    for at, value in points:
        # each bar is labelled by its start and valued at its end (Alpaca's way)
        assert value == _intraday_equity(at + 300, fills, candles, DEPOSIT), at
    assert points[-1][1] == equity

    gains = api.get("/v1/account/realized", params={"start": "2026-11-24", "end": "2026-11-24"})
    totals = gains.json()["totals"]
    assert Decimal(totals["gain"]) == realized.quantize(MONEY)
    assert Decimal(totals["proceeds"]) == sum(p for _, _, p, _ in closed).quantize(MONEY)
    assert totals["lots"] == len(closed)

    # Running it again changes nothing.
    with pool.connection() as conn:
        before = conn.execute("SELECT * FROM eod_accounts ORDER BY account_id").fetchall()
    again = _cli(pipeline, ledger_db, "eod", "--date", DAY.isoformat(), token=operator_token)
    assert again.returncode == 0, again.stderr
    with pool.connection() as conn:
        assert conn.execute("SELECT * FROM eod_accounts ORDER BY account_id").fetchall() == before

    # The venues' reports and the ledger agree, and nothing was refused.
    report = _cli(pipeline, ledger_db, "reconcile", "--date", DAY.isoformat(), token="")
    assert report.returncode == 0, report.stdout + report.stderr
    stored = api.get(
        "/v1/admin/reconciliation",
        params={"date": DAY.isoformat()},
        headers={"Authorization": f"Bearer {operator_token}"},
    ).json()
    assert stored["status"] == "clean"
    assert stored["counts"]["matched"] == len(fills)
