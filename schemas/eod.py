"""End of day, portfolio history and realized gains. Pure: no I/O.

- When a day is over: a New York trading day D closes at 20:00 New York (`day_end`),
  the end of extended hours, when every day order (extended-hours ones included) has
  ended at the execution desk. The scheduler runs EOD for each trading day whose end the
  market clock has passed (`due_days`): after the newest day already closed, at most
  CATCH_UP_DAYS trading days back, so missed days are caught up once and a clock far
  from the ledger's past (a replay of an old session) never starts a long backfill.
- A day's books: cash plus each position at the day's regular-session closing price
  (schemas.portfolio, at cost without a price); day P&L = equity - the previous day's
  equity - the day's net deposits, so moving money in or out is not profit.
- History: profit_loss[i] = equity[i] - base_value - the deposits since the base;
  profit_loss_pct[i] = profit_loss[i] / (base_value + those deposits), as a fraction.
- Realized gains: FIFO lot closures (schemas.positions); the holding period is long
  term when the shares were held more than one year: sold after the anniversary of the
  acquisition date (New York dates; a lot bought on 29 February reaches it on 28
  February), short term otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from zoneinfo import ZoneInfo

from schemas.orders import CASH_PLACES
from schemas.portfolio import PositionValue, value_portfolio, value_position
from schemas.sessions import (
    AFTER_HOURS,
    POST_CLOSE,
    is_trading_day,
    previous_session,
    regular_hours,
)

NY = ZoneInfo("America/New_York")
ZERO = Decimal(0)
RATIO_PLACES = Decimal("0.000001")
CATCH_UP_DAYS = 10
# Orders that end with their day: EOD expires those still open.
DAY_TIFS = ("day", "opg", "cls")


def money(v: Decimal) -> Decimal:
    return v.quantize(CASH_PLACES, ROUND_HALF_EVEN)


def ratio(num: Decimal, den: Decimal) -> Decimal:
    """num / den as a fraction to 6 places; 0 when there is nothing to divide by."""
    if den <= 0:
        return Decimal("0.000000")
    return (num / den).quantize(RATIO_PLACES, ROUND_HALF_EVEN) + 0


# -- when a day is over ---------------------------------------------------------------


def day_end(day: date) -> datetime:
    """The end of `day`'s extended hours (20:00 New York, 17:00 on a half day), in UTC."""
    hours = regular_hours(day)
    if hours is None:
        return datetime.combine(day, POST_CLOSE, NY).astimezone(UTC)
    return hours[1] + AFTER_HOURS


def day_start(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), NY).astimezone(UTC)


def ny_date(t: datetime) -> date:
    return t.astimezone(NY).date()


def latest_closed_day(now: datetime) -> date:
    """The newest trading day whose end `now` has passed."""
    day = ny_date(now)
    if not (is_trading_day(day) and day_end(day) <= now):
        day = previous_session(day)
    return day


def trading_days(first: date, last: date) -> list[date]:
    """The trading days from `first` to `last`, both included."""
    out, day = [], first
    while day <= last:
        if is_trading_day(day):
            out.append(day)
        day += timedelta(days=1)
    return out


def catch_up_window(now: datetime, catch_up: int = CATCH_UP_DAYS) -> list[date]:
    """The last `catch_up` closed trading days, oldest first."""
    latest = latest_closed_day(now)
    days = [latest]
    while len(days) < catch_up:
        days.append(previous_session(days[-1]))
    return days[::-1]


def due_days(now: datetime, done: Iterable[date], catch_up: int = CATCH_UP_DAYS) -> list[date]:
    """The days EOD should close now, oldest first: the closed trading days of the
    catch-up window after the newest one already done; only the latest one when none of
    the window is done (a first start, or a clock that jumped)."""
    window = catch_up_window(now, catch_up)
    done_in = [d for d in set(done) if window[0] <= d <= window[-1]]
    if not done_in:
        return [window[-1]]
    newest = max(done_in)
    return [d for d in window if d > newest]


# -- the day's books --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DayBook:
    """One account's closed day (money to 4 places)."""

    equity: Decimal
    cash: Decimal
    long_market_value: Decimal
    cost_basis: Decimal
    last_equity: Decimal
    net_deposits: Decimal
    realized_pl: Decimal
    day_pl: Decimal
    positions: tuple[PositionValue, ...]


def close_day(
    cash: Decimal,
    holdings: Sequence[tuple[str, Decimal, Decimal]],
    prices: dict[str, Decimal],
    *,
    last_equity: Decimal,
    net_deposits: Decimal,
    realized: Decimal,
) -> DayBook:
    """The books of one account: `holdings` are (symbol, qty, cost basis) at the close,
    `prices` the closing prices (a symbol without one is valued at cost)."""
    values = tuple(
        value_position(s, q, ZERO, c, prices.get(s), None) for s, q, c in holdings if q > 0
    )
    p = value_portfolio(cash, ZERO, list(values))
    return DayBook(
        equity=p.equity,
        cash=p.cash,
        long_market_value=p.long_market_value,
        cost_basis=p.cost_basis,
        last_equity=money(last_equity),
        net_deposits=money(net_deposits),
        realized_pl=money(realized),
        day_pl=p.equity - money(last_equity) - money(net_deposits),
        positions=values,
    )


# -- state at a time ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """Something that moved an account's cash or shares at `at`: a fill (cash and a
    symbol's quantity) or a cash transfer (symbol None)."""

    at: datetime
    cash: Decimal
    symbol: str | None = None
    qty: Decimal = ZERO


def states_at(
    cash_now: Decimal,
    qty_now: dict[str, Decimal],
    changes: Sequence[Change],
    times: Sequence[datetime],
) -> list[tuple[Decimal, dict[str, Decimal]]]:
    """Cash and quantities at each of `times` (ascending), counting the changes made at or
    before it. `changes` must hold every change after the first time (earlier ones may be
    there too): the state now minus them all is where the sweep starts."""
    cash = cash_now - sum((c.cash for c in changes), ZERO)
    qty = dict(qty_now)
    for c in changes:
        if c.symbol is not None:
            qty[c.symbol] = qty.get(c.symbol, ZERO) - c.qty
    ordered = sorted(changes, key=lambda c: c.at)
    out, i = [], 0
    for t in times:
        while i < len(ordered) and ordered[i].at <= t:
            c = ordered[i]
            cash += c.cash
            if c.symbol is not None:
                qty[c.symbol] = qty.get(c.symbol, ZERO) + c.qty
            i += 1
        out.append((cash, {s: q for s, q in qty.items() if q}))
    return out


def equity_of(cash: Decimal, qty: dict[str, Decimal], prices: dict[str, Decimal]) -> Decimal:
    return money(cash + sum((q * prices.get(s, ZERO) for s, q in qty.items()), ZERO))


# -- history ---------------------------------------------------------------------------

PERIODS = ("1D", "1W", "1M", "3M", "1A", "all")
TIMEFRAMES: dict[str, int] = {"1Min": 1, "5Min": 5, "15Min": 15, "1H": 60, "1D": 1440}
# Intraday bars only over periods this short (1Min over a month is ~8,000 points).
INTRADAY_PERIODS = ("1D", "1W", "1M")


def default_timeframe(period: str) -> str:
    """As Alpaca: minutes for one day, hours for a week, days beyond."""
    return {"1D": "1Min", "1W": "1H"}.get(period, "1D")


def _months_back(day: date, months: int) -> date:
    y, m = divmod(day.year * 12 + day.month - 1 - months, 12)
    m += 1
    for d in (day.day, 30, 29, 28):
        try:
            return date(y, m, d)
        except ValueError:
            continue
    raise AssertionError("unreachable")


def period_first_day(period: str, last: date) -> date | None:
    """The first calendar day a period ending on `last` covers (None: all of it)."""
    if period == "1D":
        return last
    if period == "1W":
        return last - timedelta(days=6)
    if period == "1M":
        return _months_back(last, 1) + timedelta(days=1)
    if period == "3M":
        return _months_back(last, 3) + timedelta(days=1)
    if period == "1A":
        return _months_back(last, 12) + timedelta(days=1)
    return None


def profit_loss(
    equity: Sequence[Decimal], base_value: Decimal, deposits: Sequence[Decimal]
) -> tuple[list[Decimal], list[Decimal]]:
    """Per point: the P&L since the base and its fraction of what was invested
    (`deposits[i]`: the net deposits from the base up to point i)."""
    pl = [money(e - base_value - d) for e, d in zip(equity, deposits, strict=True)]
    pct = [ratio(p, base_value + d) for p, d in zip(pl, deposits, strict=True)]
    return pl, pct


# -- realized gains ----------------------------------------------------------------------


def anniversary(day: date) -> date:
    try:
        return day.replace(year=day.year + 1)
    except ValueError:  # 29 February
        return date(day.year + 1, 2, 28)


def holding_period(acquired: date, sold: date) -> str:
    """'long' when held more than one year (sold after the anniversary), else 'short'."""
    return "long" if sold > anniversary(acquired) else "short"


@dataclass(frozen=True, slots=True)
class ClosedLot:
    symbol: str
    qty: Decimal
    acquired_at: datetime
    sold_at: datetime
    acquired: date  # New York dates
    sold: date
    proceeds: Decimal  # to 4 places
    cost_basis: Decimal
    gain: Decimal
    holding_period: str
    lot_id: int
    execution_id: str  # the sale's


def closed_lot(
    symbol: str,
    qty: Decimal,
    opened_at: datetime,
    closed_at: datetime,
    proceeds: Decimal,
    cost: Decimal,
    lot_id: int,
    execution_id: str,
) -> ClosedLot:
    """One lot closure as reported: proceeds and cost rounded to 4 places, the gain their
    difference (so each row adds up as printed)."""
    p, c = money(proceeds), money(cost)
    acquired, sold = ny_date(opened_at), ny_date(closed_at)
    return ClosedLot(
        symbol,
        qty,
        opened_at,
        closed_at,
        acquired,
        sold,
        p,
        c,
        p - c,
        holding_period(acquired, sold),
        lot_id,
        execution_id,
    )


@dataclass(frozen=True, slots=True)
class GainTotals:
    proceeds: Decimal
    cost_basis: Decimal
    gain: Decimal
    short_term_gain: Decimal
    long_term_gain: Decimal
    lots: int


def gain_totals(lots: Sequence[ClosedLot]) -> GainTotals:
    """Sums of the rows as printed."""
    return GainTotals(
        proceeds=sum((lot.proceeds for lot in lots), money(ZERO)),
        cost_basis=sum((lot.cost_basis for lot in lots), money(ZERO)),
        gain=sum((lot.gain for lot in lots), money(ZERO)),
        short_term_gain=sum(
            (lot.gain for lot in lots if lot.holding_period == "short"), money(ZERO)
        ),
        long_term_gain=sum((lot.gain for lot in lots if lot.holding_period == "long"), money(ZERO)),
        lots=len(lots),
    )
