"""End of day: expire the day's orders, snapshot every account, close the day's books.

`run_eod(settings, day)` (also `tapeflow eod --date`, POST /v1/admin/eod, and the
scheduler of `tapeflow run`, infra/eod_scheduler.py) does, for one New York trading day:

1. Expires every day, opg and cls order still open that was placed by the day's
   cut-off, through the ledger's state machine (Ledger.apply_batch with an "expired"
   answer, event id "eod:<day>:<order id>"): reservations are released exactly as the
   execution desk's own expiry releases them, and the account events go to the stream.
   When the desk later sends its own expiry for such an order, the ledger takes it as a
   no-op (infra/ledger.py).
2. Values every account at the cut-off: cash, positions and their cost basis as of the
   cut-off (the current ledger minus what changed after it), positions at the day's
   regular-session closing price (the last 1-minute candle close before the close).
3. Writes the snapshots to ClickHouse (portfolio_snapshots, position_snapshots), then in
   one PostgreSQL transaction each account's day (eod_accounts), accounts.last_equity,
   and marks the run done. A done day is never run again: a second run reports the
   first and changes nothing. A run that died half way resumes with the cut-offs it
   recorded, and every step repeats to the same result.

Two clocks: the market clock (clock_for(settings), the feed's time during a replay)
dates executions, lots and candles; PostgreSQL's now() dates cash transfers and order
placement. The market cut-off is the end of the day (20:00 New York; a manual run after
the regular close but before 20:00 cuts off at the clock's now); the ledger cut-off is
the same instant in PostgreSQL's time, mapped by the market clock's offset from it when
the run starts. With the wall clock both are the same instant. With the feed's clock
(TAPEFLOW_CLOCK=feed, replays) the ledger cut-off is PostgreSQL's now when the run starts
(the scheduler runs it within POLL_S of the feed passing the day's end).
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
from psycopg_pool import ConnectionPool

from infra import account_events, db
from infra.clickhouse import ClickHouse, shared_clickhouse
from infra.ledger import Ledger
from infra.market_view import clock_for
from infra.settings import Settings
from infra.topics import topics_of
from schemas.eod import (
    DAY_TIFS,
    DayBook,
    close_day,
    day_end,
    money,
)
from schemas.marketdata import utc_to_ns
from schemas.order_states import OPEN, OrderStatus
from schemas.sessions import previous_session, regular_hours

log = logging.getLogger("tapeflow.eod")
ZERO = Decimal(0)
EXPIRE_BATCH = 200
PRICE_LOOKBACK = timedelta(days=30)  # how far back a symbol's last close is looked for
# One EOD at a time across processes (the scheduler and `tapeflow eod`).
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"tapeflow.eod").digest()[:8], "big", signed=True)
_CLOSE_PRICES = """
SELECT symbol, argMax(close, start)
FROM candles_1m FINAL
WHERE symbol IN %(symbols)s AND start >= %(lo)s AND start < %(close)s AND close IS NOT NULL
GROUP BY symbol
"""


class EodError(Exception):
    status = 422
    code = "eod_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotATradingDay(EodError):
    code = "not_a_trading_day"


class DayNotOver(EodError):
    status, code = 409, "day_not_over"


@dataclass(frozen=True, slots=True)
class EodReport:
    day: date
    status: str  # done
    ran_now: bool  # False: the day was closed before, this call changed nothing
    started_at: datetime
    finished_at: datetime | None
    market_cutoff: datetime
    ledger_cutoff: datetime
    expired_orders: int
    accounts: int
    prices: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Cutoffs:
    market: datetime
    ledger: datetime


def cutoffs_for(
    day: date, clock_now: datetime, ledger_now: datetime, *, feed: bool = False
) -> Cutoffs:
    """The run's cut-offs (see the module's docstring). With a feed clock the ledger's
    cut-off is its now: a replay runs hours of feed in seconds, so the feed's distance
    past the day's end says nothing about when, in PostgreSQL's time, the day ended;
    what the ledger holds when the feed has moved past the day belongs to that day."""
    market = min(day_end(day), clock_now)
    if feed:
        return Cutoffs(market, ledger_now)
    return Cutoffs(market, min(ledger_now, ledger_now - (clock_now - market)))


def check_day(day: date, clock_now: datetime) -> None:
    """NotATradingDay, or DayNotOver while the day's regular session is not closed."""
    hours = regular_hours(day)
    if hours is None:
        raise NotATradingDay(f"{day} is not a New York trading day")
    if clock_now < hours[1]:
        raise DayNotOver(
            f"the regular session of {day} closes at {hours[1].isoformat()}; "
            f"the market clock is at {clock_now.isoformat()}"
        )


# -- the run --------------------------------------------------------------------------


def _figures(b: DayBook) -> tuple:
    """A day's book in the column order eod_accounts and portfolio_snapshots share."""
    return (
        b.equity,
        b.cash,
        b.long_market_value,
        b.cost_basis,
        b.last_equity,
        b.net_deposits,
        b.realized_pl,
        b.day_pl,
        len(b.positions),
    )


def run_eod(
    settings: Settings,
    day: date,
    *,
    clock: Callable[[], datetime] | None = None,
    ch: ClickHouse | None = None,
    pool: ConnectionPool | None = None,
) -> EodReport:
    """Close `day` (once; later calls report the first run). The hook for anything that
    must follow EOD (reconciliation) is after this returns."""
    clock = clock or clock_for(settings)
    check_day(day, clock())
    pool = pool or db.pool(settings.postgres)
    ch = ch or shared_clickhouse(settings)
    with pool.connection() as lock_conn:
        lock_conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            return _run_locked(settings, day, clock, ch, pool)
        finally:
            lock_conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def _run_locked(
    settings: Settings,
    day: date,
    clock: Callable[[], datetime],
    ch: ClickHouse,
    pool: ConnectionPool,
) -> EodReport:
    found = report(pool, day)
    if found is not None and found.status == "done":
        return found
    if found is None:
        ledger_now = db.fetchone(pool, "SELECT now()")[0]  # type: ignore[index]
        cut = cutoffs_for(day, clock(), ledger_now, feed=settings.clock == "feed")
        db.fetchone(
            pool,
            "INSERT INTO eod_runs (day, status, market_cutoff, ledger_cutoff) "
            "VALUES (%s, 'running', %s, %s) ON CONFLICT (day) DO NOTHING RETURNING day",
            (day, cut.market, cut.ledger),
        )
    else:  # resumed: the cut-offs the first attempt recorded
        cut = Cutoffs(found.market_cutoff, found.ledger_cutoff)
    log.info("EOD %s: cut-offs market %s, ledger %s", day, cut.market, cut.ledger)
    expired = expire_day_orders(settings, pool, day, cut)
    books, prices = compute_books(pool, ch, day, cut)
    write_snapshots(ch, day, books)
    with pool.connection() as conn, conn.transaction():
        with conn.cursor().copy(
            "COPY eod_accounts (day, account_id, equity, cash, long_market_value, cost_basis, "
            "last_equity, net_deposits, realized_pl, day_pl, positions) FROM STDIN"
        ) as copy:
            for account_id, b in books.items():
                copy.write_row((day, account_id, *_figures(b)))
        conn.execute(
            "UPDATE accounts a SET last_equity = e.equity, last_equity_day = e.day "
            "FROM eod_accounts e WHERE e.day = %s AND e.account_id = a.id "
            "AND (a.last_equity_day IS NULL OR a.last_equity_day < e.day)",
            (day,),
        )
        conn.execute(
            "UPDATE eod_runs SET status = 'done', finished_at = now(), expired_orders = %s, "
            "accounts = %s, prices = %s WHERE day = %s",
            (
                expired,
                len(books),
                orjson.dumps({s: str(p) for s, p in sorted(prices.items())}).decode(),
                day,
            ),
        )
    log.info("EOD %s done: %d orders expired, %d accounts", day, expired, len(books))
    done = report(pool, day)
    assert done is not None
    return EodReport(**{**_fields(done), "ran_now": True})


def _fields(r: EodReport) -> dict[str, Any]:
    return {name: getattr(r, name) for name in EodReport.__slots__}


def report(pool: ConnectionPool, day: date) -> EodReport | None:
    """The recorded run of `day` (ran_now False), or None."""
    row = db.fetchone(
        pool,
        "SELECT day, status, started_at, finished_at, market_cutoff, ledger_cutoff, "
        "expired_orders, accounts, prices FROM eod_runs WHERE day = %s",
        (day,),
    )
    if row is None:
        return None
    d, status, started, finished, market, ledger, expired, accounts, prices = row
    return EodReport(d, status, False, started, finished, market, ledger, expired, accounts, prices)


def done_days(pool: ConnectionPool, first: date, last: date) -> set[date]:
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT day FROM eod_runs WHERE status = 'done' AND day BETWEEN %s AND %s",
            (first, last),
        ).fetchall()
    return {r[0] for r in rows}


# -- 1. expiry --------------------------------------------------------------------------


def expire_event_id(day: date, order_id: UUID) -> str:
    return f"eod:{day.isoformat()}:{order_id}"


def expire_day_orders(settings: Settings, pool: ConnectionPool, day: date, cut: Cutoffs) -> int:
    """Expire the open day/opg/cls orders placed by the ledger cut-off that their desk
    has let lapse by the market cut-off; how many (this run's, an earlier attempt's
    included).

    Left open, because their desk still works them: orders `accepted` (placed outside
    the session they may trade in, held for the next one: an order taken after the
    close belongs to the next day), and extended-hours orders while after-hours still
    runs (a manual run before 20:00 New York). Expiring those here would release a
    reservation their desk may still fill against. The desk expires the same orders on
    its own; the ledger takes that second ending as a no-op."""
    statuses = [s.value for s in OPEN if s != OrderStatus.ACCEPTED]
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT id, account_id FROM orders WHERE status = ANY(%s) "
            "AND time_in_force = ANY(%s) AND created_at <= %s "
            "AND (NOT extended_hours OR %s) ORDER BY account_id, id",
            (statuses, list(DAY_TIFS), cut.ledger, cut.market >= day_end(day)),
        ).fetchall()
    market_ns = utc_to_ns(cut.market)
    if not rows:
        return 0
    import redis

    ledger = Ledger(pool, topics_of(settings))
    at = market_ns
    client = redis.Redis.from_url(settings.redis)
    expired = 0
    try:
        for i in range(0, len(rows), EXPIRE_BATCH):
            events = [
                {
                    "event_id": expire_event_id(day, order_id),
                    "kind": "expired",
                    "at": at,
                    "order_id": str(order_id),
                    "account_id": str(account_id),
                    "reason": "end of day",
                }
                for order_id, account_id in rows[i : i + EXPIRE_BATCH]
            ]
            results = ledger.apply_batch(events)
            written = [e for r in results for e in r.events]
            account_events.publish(client, written)
            expired += sum(r.outcome in ("applied", "duplicate") for r in results)
            for r in results:
                if r.outcome == "anomaly":
                    log.warning("EOD %s: expiry %s refused: %s", day, r.event_id, r.reason)
    finally:
        client.close()
    return expired


# -- 2. the books ------------------------------------------------------------------------


def previous_cutoffs(pool: ConnectionPool, day: date, cut: Cutoffs) -> Cutoffs:
    """The previous trading day's cut-offs: as its run recorded them, else its end mapped
    by this run's offset."""
    prev = previous_session(day)
    row = db.fetchone(
        pool, "SELECT market_cutoff, ledger_cutoff FROM eod_runs WHERE day = %s", (prev,)
    )
    if row is not None:
        return Cutoffs(row[0], row[1])
    market = day_end(prev)
    return Cutoffs(market, cut.ledger - (cut.market - market))


def closing_prices(ch: ClickHouse, day: date, symbols: set[str]) -> dict[str, Decimal]:
    """Each symbol's regular-session closing price of `day`: the close of its last
    1-minute candle before the regular close (from earlier days when it did not trade)."""
    hours = regular_hours(day)
    if not symbols or hours is None:
        return {}
    close = hours[1]
    rows = ch.query(
        _CLOSE_PRICES, {"symbols": sorted(symbols), "lo": close - PRICE_LOOKBACK, "close": close}
    )
    return {s: Decimal(p) for s, p in rows}


def _executions_after(conn, after: datetime, accounts: list[UUID] | None) -> list[tuple]:
    sql = "SELECT account_id, symbol, side, qty, price FROM executions WHERE executed_at > %s"
    params: list[Any] = [after]
    if accounts is not None:
        sql += " AND account_id = ANY(%s)"
        params.append(accounts)
    return conn.execute(sql, params).fetchall()


def _by_account(conn, sql: str, params: list[Any], accounts: list[UUID] | None) -> list[tuple]:
    if accounts is not None:
        sql = sql.replace("WHERE", "WHERE account_id = ANY(%s) AND", 1)
        params = [accounts, *params]
    return conn.execute(sql, params).fetchall()


@dataclass
class _State:
    cash: Decimal = ZERO
    qty: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    cost: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))


def holdings_at(
    pool: ConnectionPool, cut: Cutoffs, accounts: list[UUID] | None = None
) -> dict[UUID, _State]:
    """Each account's cash, quantities and cost bases at the cut-off (accounts opened by
    then; `accounts` limits it): the ledger now, minus the fills after the market
    cut-off and the cash transfers after the ledger cut-off."""
    out: dict[UUID, _State] = {}
    with pool.connection() as conn:
        if accounts is None:
            opened = conn.execute(
                "SELECT id, cash FROM accounts WHERE created_at <= %s", (cut.ledger,)
            ).fetchall()
        else:
            opened = conn.execute(
                "SELECT id, cash FROM accounts WHERE id = ANY(%s)", (accounts,)
            ).fetchall()
        for account_id, cash in opened:
            out[account_id] = _State(cash)
        held = "SELECT account_id, symbol, qty, cost_basis FROM positions WHERE true"
        for account_id, symbol, qty, cost in _by_account(conn, held, [], accounts):
            if account_id in out:
                out[account_id].qty[symbol] += qty
                out[account_id].cost[symbol] += cost
        for account_id, amount in _by_account(
            conn,
            "SELECT account_id, sum(amount) FROM cash_transfers WHERE created_at > %s "
            "GROUP BY account_id",
            [cut.ledger],
            accounts,
        ):
            if account_id in out:
                out[account_id].cash -= amount
        for account_id, symbol, side, qty, price in _executions_after(conn, cut.market, accounts):
            s = out.get(account_id)
            if s is None:
                continue
            value = money(qty * price)  # as the fill moved cash (schemas.positions)
            s.cash += value if side == "buy" else -value
            s.qty[symbol] -= qty if side == "buy" else -qty
        for account_id, symbol, cost in _by_account(
            conn,
            "SELECT account_id, symbol, sum(qty * price) FROM tax_lots WHERE opened_at > %s "
            "GROUP BY account_id, symbol",
            [cut.market],
            accounts,
        ):
            if account_id in out:
                out[account_id].cost[symbol] -= cost
        for account_id, symbol, cost in _by_account(
            conn,
            "SELECT account_id, symbol, sum(cost_basis) FROM lot_closures WHERE closed_at > %s "
            "GROUP BY account_id, symbol",
            [cut.market],
            accounts,
        ):
            if account_id in out:
                out[account_id].cost[symbol] += cost
    return out


def _sums(
    pool: ConnectionPool, sql: str, lo: datetime, hi: datetime, accounts: list[UUID] | None
) -> dict[UUID, Decimal]:
    with pool.connection() as conn:
        return dict(_by_account(conn, sql, [lo, hi], accounts))


def compute_books(
    pool: ConnectionPool,
    ch: ClickHouse,
    day: date,
    cut: Cutoffs,
    accounts: list[UUID] | None = None,
    *,
    with_last: bool = True,
) -> tuple[dict[UUID, DayBook], dict[str, Decimal]]:
    """Every account's books for `day` at the cut-offs (or those of `accounts`), and the
    closing prices used. last_equity is the previous trading day's closed equity, or,
    for an account without one, its value recomputed at that day's cut-offs."""
    states = holdings_at(pool, cut, accounts)
    symbols = {s for st in states.values() for s, q in st.qty.items() if q > 0}
    prices = closing_prices(ch, day, symbols)
    prev = previous_cutoffs(pool, day, cut)
    deposits = _sums(
        pool,
        "SELECT account_id, sum(amount) FROM cash_transfers WHERE created_at > %s "
        "AND created_at <= %s GROUP BY account_id",
        prev.ledger,
        cut.ledger,
        accounts,
    )
    realized = _sums(
        pool,
        "SELECT account_id, sum(realized_pnl) FROM lot_closures WHERE closed_at > %s "
        "AND closed_at <= %s GROUP BY account_id",
        prev.market,
        cut.market,
        accounts,
    )
    last: dict[UUID, Decimal] = {}
    if with_last:
        with pool.connection() as conn:
            last = dict(
                _by_account(
                    conn,
                    "SELECT account_id, equity FROM eod_accounts WHERE day = %s",
                    [previous_session(day)],
                    accounts,
                )
            )
        missing = [a for a in states if a not in last]
        if missing:
            earlier, _ = compute_books(
                pool, ch, previous_session(day), prev, missing, with_last=False
            )
            last |= {a: b.equity for a, b in earlier.items()}
    books = {}
    for account_id, st in states.items():
        holdings = [(s, q, st.cost[s]) for s, q in sorted(st.qty.items()) if q > 0]
        books[account_id] = close_day(
            st.cash,
            holdings,
            prices,
            last_equity=last.get(account_id, ZERO),
            net_deposits=deposits.get(account_id, ZERO),
            realized=realized.get(account_id, ZERO),
        )
    return books, prices


# -- 3. snapshots -------------------------------------------------------------------------

PORTFOLIO_COLUMNS = [
    "account_id",
    "day",
    "equity",
    "cash",
    "long_market_value",
    "cost_basis",
    "last_equity",
    "net_deposits",
    "realized_pl",
    "day_pl",
    "positions",
]
POSITION_COLUMNS = ["account_id", "day", "symbol", "qty", "cost_basis", "price", "market_value"]


def write_snapshots(ch: ClickHouse, day: date, books: dict[UUID, DayBook]) -> None:
    rows, positions = [], []
    for account_id, b in books.items():
        rows.append([account_id, day, *_figures(b)])
        for p in b.positions:
            positions.append(
                [account_id, day, p.symbol, p.qty, p.cost_basis, p.current_price, p.market_value]
            )
    for i in range(0, len(rows), 10_000):
        ch.insert("portfolio_snapshots", rows[i : i + 10_000], PORTFOLIO_COLUMNS)
    for i in range(0, len(positions), 10_000):
        ch.insert("position_snapshots", positions[i : i + 10_000], POSITION_COLUMNS)
