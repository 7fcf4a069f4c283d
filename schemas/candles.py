"""One-minute candles from trades: the reference rules, free of I/O.

Rules (also in the README):
- A candle covers [start, start + 60 s) of *event* time, UTC.
- A trade counts once per (venue, trade_id), however often it is delivered.
- A trade later broken (TradeBreak with the same venue and trade_id) is removed.
- open/high/low/close use only trades whose sale conditions update last
  (schemas.sale_conditions); volume, VWAP and the trade count use trades
  that update volume. A minute with only non-last trades has volume but no
  OHLC (None).
- open is the earliest and close the latest eligible trade, ordered by
  (event_ns, venue, trade_id) so ties resolve the same way everywhere.
- VWAP is sum(price * size) / volume rounded half-even to 4 places.

The candles flow computes the same thing inside ClickHouse; the tests compare
the two.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from schemas.marketdata import PRICE_PLACES, Trade, TradeBreak

MINUTE_NS = 60_000_000_000


@dataclass(frozen=True, slots=True)
class Candle:
    symbol: str
    start_ns: int
    open: Decimal | None
    high: Decimal | None
    low: Decimal | None
    close: Decimal | None
    volume: int
    vwap: Decimal | None
    trades: int


def minute_start(event_ns: int) -> int:
    return event_ns - event_ns % MINUTE_NS


def vwap(notional: Decimal, volume: int) -> Decimal | None:
    if volume == 0:
        return None
    return (notional / volume).quantize(PRICE_PLACES, rounding=ROUND_HALF_EVEN)


def build_candles(events: Iterable[Trade | TradeBreak]) -> dict[tuple[str, int], Candle]:
    """Candles keyed by (symbol, minute start ns) from trades and breaks in any order."""
    trades: dict[tuple[str, str, str], Trade] = {}
    broken: set[tuple[str, str, str]] = set()
    for ev in events:
        key = (ev.symbol, ev.venue, ev.trade_id)
        if isinstance(ev, TradeBreak):
            broken.add(key)
        else:
            trades.setdefault(key, ev)
    buckets: dict[tuple[str, int], list[Trade]] = {}
    for key, trade in trades.items():
        if key not in broken:
            buckets.setdefault((trade.symbol, minute_start(trade.event_ns)), []).append(trade)
    candles = {}
    for key, bucket in buckets.items():
        candle = candle_of(key[0], key[1], bucket)
        if candle is not None:
            candles[key] = candle
    return candles


def candle_of(symbol: str, start_ns: int, trades: list[Trade]) -> Candle | None:
    counted = [t for t in trades if t.updates_volume]
    if not counted:
        return None
    last = sorted(
        (t for t in trades if t.updates_last), key=lambda t: (t.event_ns, t.venue, t.trade_id)
    )
    volume = sum(t.size for t in counted)
    notional = sum((t.price * t.size for t in counted), Decimal(0))
    prices = [t.price for t in last]
    return Candle(
        symbol=symbol,
        start_ns=start_ns,
        open=last[0].price if last else None,
        high=max(prices) if prices else None,
        low=min(prices) if prices else None,
        close=last[-1].price if last else None,
        volume=volume,
        vwap=vwap(notional, volume),
        trades=len(counted),
    )
