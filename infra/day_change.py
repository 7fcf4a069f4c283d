"""Day change per symbol from the candles in ClickHouse, for many symbols in two queries.

- last price: the close of the symbol's newest 1-minute candle that has one (its last
  trade that may set a last price; odd lots and extended-hours trades do not).
- previous close: the close of the 1d candle (the New York calendar day, as
  CandleStore's 1d rollup: the close of its last minute that has one) of the trading
  day before the last price's New York day. So a replay of an old session shows that
  session's change, and before today's first trade a symbol shows yesterday's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from infra.candle_store import NEW_YORK, CandleStore
from schemas.sessions import UNKNOWN, DayChange, day_change, previous_session

_LAST = """
SELECT symbol, argMax(close, start), toUnixTimestamp(max(start))
FROM candles_1m FINAL
WHERE symbol IN %(symbols)s AND close IS NOT NULL
GROUP BY symbol
"""
_DAILY_CLOSES = """
SELECT symbol, toDate(toTimeZone(start, 'America/New_York')) AS day, argMax(close, start)
FROM candles_1m FINAL
WHERE symbol IN %(symbols)s AND start >= %(lo)s AND start < %(hi)s AND close IS NOT NULL
GROUP BY symbol, day
"""


def _ny_day(t: datetime) -> date:
    return t.astimezone(NEW_YORK).date()


def day_changes(candles: CandleStore, symbols: Sequence[str]) -> dict[str, DayChange]:
    if not symbols:
        return {}
    wanted = sorted(set(symbols))
    last: dict[str, tuple[Decimal, date]] = {}
    for symbol, close, start in candles.ch.query(_LAST, {"symbols": wanted}):
        last[symbol] = (close, _ny_day(datetime.fromtimestamp(int(start), UTC)))
    prior = {s: previous_session(day) for s, (_, day) in last.items()}
    closes: dict[tuple[str, date], Decimal] = {}
    if prior:
        # One range read covering every wanted day (a New York day lies within UTC d..d+2).
        lo, hi = min(prior.values()), max(prior.values()) + timedelta(days=2)
        rows = candles.ch.query(
            _DAILY_CLOSES,
            {
                "symbols": sorted(prior),
                "lo": datetime.combine(lo, datetime.min.time(), UTC),
                "hi": datetime.combine(hi, datetime.min.time(), UTC),
            },
        )
        closes = {(s, d): c for s, d, c in rows}
    out = {}
    for symbol in symbols:
        if symbol not in last:
            out[symbol] = UNKNOWN
            continue
        out[symbol] = day_change(last[symbol][0], closes.get((symbol, prior[symbol])))
    return out


_PREVIOUS_TTL_S = 60.0
_previous_cache: dict[tuple[str, date], tuple[float, Decimal | None]] = {}


def previous_closes(
    candles: CandleStore, symbols: Sequence[str], today: date
) -> dict[str, Decimal | None]:
    """Each symbol's close on the trading day before `today` (New York), from the 1d rollup.

    A previous close does not change during the day, so answers are kept for a minute
    per process: valuing a portfolio of 100 positions then costs no ClickHouse query."""
    import time

    now = time.monotonic()
    day = previous_session(today)
    out: dict[str, Decimal | None] = {}
    missing = []
    for s in set(symbols):
        hit = _previous_cache.get((s, day))
        if hit is not None and now - hit[0] < _PREVIOUS_TTL_S:
            out[s] = hit[1]
        else:
            missing.append(s)
    if missing:
        lo = datetime.combine(day, datetime.min.time(), UTC)
        rows = candles.ch.query(
            _DAILY_CLOSES,
            {"symbols": sorted(missing), "lo": lo, "hi": lo + timedelta(days=2)},
        )
        found = {s: c for s, d, c in rows if d == day}
        for s in missing:
            out[s] = found.get(s)
            _previous_cache[(s, day)] = (now, out[s])
    return out
