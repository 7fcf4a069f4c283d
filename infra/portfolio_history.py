"""An account's equity over time, for GET /v1/portfolio/history.

- Daily (timeframe 1D): the end-of-day snapshots in ClickHouse (portfolio_snapshots),
  one point per closed day, stamped at the day's midnight New York. The base value is
  the equity of the close before the first point (the first snapshot's last_equity).
- Intraday (1Min, 5Min, 15Min, 1H): one point per bar of each trading day's regular
  session (04:00-20:00 New York with extended_hours), bars counted from the session's
  start and stamped at their start, up to the market clock's now. A bar's equity is the
  cash and shares after every fill executed before the bar's end, valued at each
  symbol's last 1-minute candle close before it (the last fill price when no candle
  exists). The base value is the equity at the previous trading day's close (its EOD
  snapshot, else recomputed the way EOD computes it).
- Cash transfers count from the start of the trading day they belong to (the day whose
  EOD ledger cut-off is the first at or after them; see infra/eod.py), so a deposit
  moves equity but never profit_loss.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from psycopg_pool import ConnectionPool

from infra.clickhouse import ClickHouse
from infra.eod import PRICE_LOOKBACK, Cutoffs, compute_books
from schemas.eod import (
    NY,
    ZERO,
    Change,
    day_end,
    day_start,
    equity_of,
    money,
    profit_loss,
    states_at,
)
from schemas.sessions import AFTER_HOURS, PRE_OPEN, previous_session, regular_hours

FAR = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class History:
    timestamp: list[int]
    equity: list[Decimal]
    profit_loss: list[Decimal]
    profit_loss_pct: list[Decimal]
    base_value: Decimal
    base_value_asof: date | None


def _history(
    stamps: list[int],
    equity: list[Decimal],
    deposits: list[Decimal],
    base: Decimal,
    asof: date | None,
) -> History:
    pl, pct = profit_loss(equity, base, deposits)
    return History(stamps, equity, pl, pct, money(base), asof)


# -- daily -------------------------------------------------------------------------------


def daily(ch: ClickHouse, account_id: UUID, first: date | None, last: date) -> History:
    rows = ch.query(
        "SELECT day, equity, net_deposits, last_equity FROM portfolio_snapshots FINAL "
        "WHERE account_id = %(a)s AND day >= %(lo)s AND day <= %(hi)s ORDER BY day",
        {"a": account_id, "lo": first or date(1970, 1, 2), "hi": last},
    )
    if not rows:
        return History([], [], [], [], money(ZERO), None)
    base = Decimal(rows[0][3])
    running, deposits = ZERO, []
    for r in rows:
        running += Decimal(r[2])
        deposits.append(running)
    stamps = [int(day_start(r[0]).timestamp()) for r in rows]
    equity = [Decimal(r[1]) for r in rows]
    return _history(stamps, equity, deposits, base, previous_session(rows[0][0]))


# -- intraday ------------------------------------------------------------------------------


def session_bounds(day: date, extended: bool) -> tuple[datetime, datetime] | None:
    hours = regular_hours(day)
    if hours is None:
        return None
    if not extended:
        return hours
    return (
        datetime.combine(day, PRE_OPEN, NY).astimezone(UTC),
        hours[1] + AFTER_HOURS,
    )


def bars(
    days: list[date], minutes: int, extended: bool, now: datetime
) -> list[tuple[date, datetime, datetime]]:
    """(day, bar start, bar end) of every bar that has started by `now`; the last one
    ends at `now` while it runs."""
    out = []
    step = timedelta(minutes=minutes)
    for day in days:
        bounds = session_bounds(day, extended)
        if bounds is None:
            continue
        start, close = bounds
        while start < close and start <= now:
            out.append((day, start, min(start + step, close, now)))
            start += step
    return out


def _ledger_cutoffs(
    pool: ConnectionPool, days: list[date], offset: timedelta
) -> dict[date, datetime]:
    """Each day's ledger cut-off: as its EOD run recorded it, else its end mapped by the
    market clock's offset from the wall."""
    with pool.connection() as conn:
        found = dict(
            conn.execute(
                "SELECT day, ledger_cutoff FROM eod_runs WHERE day = ANY(%s)", (days,)
            ).fetchall()
        )
    return {d: found.get(d, day_end(d) - offset) for d in days}


def _prices(
    ch: ClickHouse, symbols: set[str], lo: datetime, hi: datetime
) -> dict[str, tuple[list[datetime], list[Decimal]]]:
    """Per symbol, its 1-minute closes by the minute's end, from PRICE_LOOKBACK before lo."""
    out: dict[str, tuple[list[datetime], list[Decimal]]] = defaultdict(lambda: ([], []))
    if not symbols:
        return out
    rows = ch.query(
        "SELECT symbol, toUnixTimestamp(start), close FROM candles_1m FINAL "
        "WHERE symbol IN %(s)s AND start >= %(lo)s AND start < %(hi)s AND close IS NOT NULL "
        "ORDER BY symbol, start",
        {"s": sorted(symbols), "lo": lo - PRICE_LOOKBACK, "hi": hi},
    )
    for symbol, start, close in rows:
        times, closes = out[symbol]
        times.append(datetime.fromtimestamp(int(start), UTC) + timedelta(minutes=1))
        closes.append(Decimal(close))
    return out


def _price_at(series: tuple[list[datetime], list[Decimal]], t: datetime) -> Decimal | None:
    i = bisect.bisect_right(series[0], t)
    return series[1][i - 1] if i else None


def intraday(
    pool: ConnectionPool,
    ch: ClickHouse,
    account_id: UUID,
    days: list[date],
    minutes: int,
    *,
    extended: bool,
    clock_now: datetime,
) -> History:
    points = bars(days, minutes, extended, clock_now)
    base_day = previous_session(days[0])
    offset = clock_now - datetime.now(UTC)
    cut_of = _ledger_cutoffs(pool, [base_day, *days], offset)
    base_cut = Cutoffs(day_end(base_day), cut_of[base_day])
    with pool.connection() as conn:
        snap = conn.execute(
            "SELECT equity FROM eod_accounts WHERE day = %s AND account_id = %s",
            (base_day, account_id),
        ).fetchone()
        cash_now = conn.execute("SELECT cash FROM accounts WHERE id = %s", (account_id,)).fetchone()
        if cash_now is None:
            return History([], [], [], [], money(ZERO), None)
        qty_now = {
            s: q
            for s, q in conn.execute(
                "SELECT symbol, qty FROM positions WHERE account_id = %s", (account_id,)
            ).fetchall()
        }
        fills = conn.execute(
            "SELECT executed_at, side, symbol, qty, price FROM executions "
            "WHERE account_id = %s AND executed_at > %s ORDER BY executed_at",
            (account_id, base_cut.market),
        ).fetchall()
        transfers = conn.execute(
            "SELECT created_at, amount FROM cash_transfers "
            "WHERE account_id = %s AND created_at > %s",
            (account_id, base_cut.ledger),
        ).fetchall()
    if snap is not None:
        base = snap[0]
    else:
        books, _ = compute_books(pool, ch, base_day, base_cut, [account_id], with_last=False)
        base = books[account_id].equity if account_id in books else ZERO
    last_fill: dict[str, list[tuple[datetime, Decimal]]] = defaultdict(list)
    changes = []
    for at, side, symbol, qty, price in fills:
        value = money(qty * price)
        sign = 1 if side == "buy" else -1
        changes.append(Change(at, -sign * value, symbol, sign * qty))
        last_fill[symbol].append((at, price))
    moved = []
    for created, amount in transfers:
        day = next((d for d in days if cut_of[d] >= created), None)
        at = day_start(day) if day is not None else FAR
        changes.append(Change(at, amount))
        moved.append((at, amount))
    times = [end for _, _, end in points]
    states = states_at(cash_now[0], qty_now, changes, times)
    symbols = {s for _, qty in states for s in qty} | set(last_fill)
    lo = points[0][1] if points else clock_now
    series = _prices(ch, symbols, lo, times[-1] if times else clock_now)
    equity, deposits = [], []
    for t, (cash, qty) in zip(times, states, strict=True):
        prices = {}
        for s in qty:
            p = _price_at(series[s], t) if s in series else None
            if p is None:
                done = [price for at, price in last_fill.get(s, []) if at <= t]
                p = done[-1] if done else ZERO
            prices[s] = p
        equity.append(equity_of(cash, qty, prices))
        deposits.append(sum((a for at, a in moved if at <= t), ZERO))
    stamps = [int(start.timestamp()) for _, start, _ in points]
    return _history(stamps, equity, deposits, Decimal(base), base_day)
