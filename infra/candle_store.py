"""Trades into ClickHouse, 1-minute candles recomputed from them, rollups read back.

A candle is always recomputed from the whole set of its minute's trades in
ClickHouse (never incremented), so duplicate deliveries, restarts, late trades
and breaks all converge on the same row: the same rules as schemas.candles.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from infra.clickhouse import ClickHouse
from schemas.candles import MINUTE_NS, Candle, minute_start, vwap
from schemas.marketdata import Trade, TradeBreak

NEW_YORK = ZoneInfo("America/New_York")
INTERVALS: dict[str, int] = {"1m": 1, "5m": 5, "15m": 15, "1h": 60, "1d": 1440}
TRADE_COLUMNS = [
    "symbol",
    "minute",
    "venue",
    "trade_id",
    "event_ns",
    "price",
    "size",
    "conditions",
    "updates_last",
    "updates_volume",
]
CANDLE_COLUMNS = [
    "symbol",
    "start",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "notional",
    "vwap",
    "trades",
    "version",
    "is_deleted",
]
_AGGREGATE = """
SELECT symbol, toUnixTimestamp(minute) AS m,
    argMinIf(price, (event_ns, venue, trade_id), updates_last = 1),
    maxIf(price, updates_last = 1),
    minIf(price, updates_last = 1),
    argMaxIf(price, (event_ns, venue, trade_id), updates_last = 1),
    countIf(updates_last = 1),
    sumIf(size, updates_volume = 1),
    sumIf(toDecimal128(price, 4) * size, updates_volume = 1),
    countIf(updates_volume = 1)
FROM trades FINAL
WHERE symbol IN %(symbols)s AND (symbol, minute) IN %(keys)s
  AND (symbol, venue, trade_id) NOT IN (
      SELECT symbol, venue, trade_id FROM trade_breaks WHERE symbol IN %(symbols)s)
GROUP BY symbol, minute
HAVING countIf(updates_volume = 1) > 0
"""


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(frozen=True, slots=True)
class Bar:
    """A candle as served: any interval, start as an aware UTC datetime."""

    symbol: str
    start: datetime
    open: Decimal | None
    high: Decimal | None
    low: Decimal | None
    close: Decimal | None
    volume: int
    vwap: Decimal | None
    trades: int


# Called with the candles_1m rows (CANDLE_COLUMNS order) right after they are written.
RowsWritten = Callable[[list[list]], None]


class CandleStore:
    def __init__(self, ch: ClickHouse, on_rewrite: RowsWritten | None = None) -> None:
        self.ch = ch
        self.on_rewrite = on_rewrite

    def apply(self, events: Iterable[Trade | TradeBreak]) -> int:
        """Record trades and breaks, rewrite every minute they touch; return how many."""
        events = list(events)
        trades = [e for e in events if isinstance(e, Trade)]
        breaks = [e for e in events if isinstance(e, TradeBreak)]
        self.ch.insert("trades", [_trade_row(t) for t in trades], TRADE_COLUMNS)
        self.ch.insert(
            "trade_breaks",
            [[b.symbol, b.venue, b.trade_id, b.event_ns] for b in breaks],
            ["symbol", "venue", "trade_id", "event_ns"],
        )
        touched = {(t.symbol, minute_start(t.event_ns) // 1_000_000_000) for t in trades}
        touched |= self._minutes_of(breaks)
        self._rewrite(touched)
        return len(touched)

    def _minutes_of(self, breaks: list[TradeBreak]) -> set[tuple[str, int]]:
        if not breaks:
            return set()
        rows = self.ch.query(
            "SELECT DISTINCT symbol, toUnixTimestamp(minute) FROM trades "
            "WHERE (symbol, venue, trade_id) IN %(ids)s",
            {"ids": [(b.symbol, b.venue, b.trade_id) for b in breaks]},
        )
        return {(s, int(m)) for s, m in rows}

    def _rewrite(self, touched: set[tuple[str, int]]) -> None:
        if not touched:
            return
        keys = sorted(touched)
        rows = self.ch.query(
            _AGGREGATE,
            {"symbols": sorted({s for s, _ in keys}), "keys": [(s, _utc(m)) for s, m in keys]},
        )
        version = time.time_ns()
        out = []
        seen = set()
        for sym, m, o, h, lo, c, n_last, volume, notional, count in rows:
            seen.add((sym, int(m)))
            has_last = n_last > 0
            out.append(
                [
                    sym,
                    _utc(int(m)),
                    o if has_last else None,
                    h if has_last else None,
                    lo if has_last else None,
                    c if has_last else None,
                    int(volume),
                    notional,
                    vwap(Decimal(notional), int(volume)),
                    int(count),
                    version,
                    0,
                ]
            )
        for sym, m in keys:  # every trade of the minute was broken: retire the candle
            if (sym, m) not in seen:
                out.append(
                    [sym, _utc(m), None, None, None, None, 0, Decimal(0), None, 0, version, 1]
                )
        self.ch.insert("candles_1m", out, CANDLE_COLUMNS)
        if self.on_rewrite is not None:
            self.on_rewrite(out)

    def candles(
        self,
        symbol: str,
        interval: str,
        start: datetime,
        end: datetime,
        limit: int,
    ) -> list[Bar]:
        """Candles with start in [start, end), oldest first, aligned to the New York day."""
        minutes = INTERVALS[interval]
        if minutes == 1:
            bucket = "start"
        elif minutes == 1440:
            bucket = "toDateTime(toStartOfDay(toTimeZone(start, 'America/New_York')), 'UTC')"
        else:
            bucket = (
                "toDateTime(toStartOfInterval(toTimeZone(start, 'America/New_York'), "
                f"INTERVAL {minutes} MINUTE), 'UTC')"
            )
        rows = self.ch.query(
            f"""
            SELECT toUnixTimestamp({bucket}) AS b,
                argMinIf(open, start, open IS NOT NULL), max(high), min(low),
                argMaxIf(close, start, close IS NOT NULL),
                sum(volume), sum(notional), sum(trades)
            FROM candles_1m FINAL
            WHERE symbol = %(symbol)s AND start >= %(lo)s AND start < %(read_to)s
            GROUP BY b HAVING b >= toUnixTimestamp(%(lo)s) AND b < toUnixTimestamp(%(hi)s)
            ORDER BY b LIMIT %(limit)s
            """,
            # A bucket that starts before `end` is read whole, even past `end`
            # (26 h covers a daily bucket across a DST change).
            {
                "symbol": symbol,
                "lo": start,
                "hi": end,
                "read_to": end + timedelta(minutes=minutes if minutes < 1440 else 26 * 60),
                "limit": limit,
            },
        )
        return [
            Bar(
                symbol=symbol,
                start=_utc(int(b)),
                open=o,
                high=h,
                low=lo,
                close=c,
                volume=int(v),
                vwap=vwap(Decimal(n), int(v)),
                trades=int(t),
            )
            for b, o, h, lo, c, v, n, t in rows
        ]

    def known_symbol(self, symbol: str) -> bool:
        rows = self.ch.query("SELECT 1 FROM candles_1m WHERE symbol = %(s)s LIMIT 1", {"s": symbol})
        return bool(rows)

    def one_minute(self, symbol: str | None = None) -> list[Candle]:
        """Every stored 1-minute candle (for checks and exports)."""
        where = "WHERE symbol = %(s)s" if symbol else ""
        rows = self.ch.query(
            "SELECT symbol, toUnixTimestamp(start), open, high, low, close, volume, vwap, trades "
            f"FROM candles_1m FINAL {where} ORDER BY symbol, start",
            {"s": symbol} if symbol else None,
        )
        return [
            Candle(s, int(t) * 1_000_000_000, o, h, lo, c, int(v), w, int(n))
            for s, t, o, h, lo, c, v, w, n in rows
        ]


def next_bucket_start(start: datetime, interval: str) -> datetime:
    """Where the bucket after the one starting at `start` begins (days follow New York)."""
    if interval != "1d":
        return start + timedelta(minutes=INTERVALS[interval])
    local = start.astimezone(NEW_YORK).date() + timedelta(days=1)
    return datetime.combine(local, datetime.min.time(), NEW_YORK).astimezone(UTC)


def _trade_row(t: Trade) -> list:
    return [
        t.symbol,
        _utc(minute_start(t.event_ns) // 1_000_000_000),
        t.venue,
        t.trade_id,
        t.event_ns,
        t.price,
        t.size,
        list(t.conditions),
        int(t.updates_last),
        int(t.updates_volume),
    ]


__all__ = ["INTERVALS", "MINUTE_NS", "Bar", "CandleStore", "next_bucket_start"]
