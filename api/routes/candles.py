from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CandlesDep, QuotesDep, SymbolPath
from api.errors import ERROR_RESPONSES, invalid, not_found
from api.models import CandleOut, CandlesOut, Interval
from infra.candle_store import next_bucket_start

router = APIRouter(prefix="/v1/candles", tags=["candles"], responses=ERROR_RESPONSES)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise invalid("invalid_time", f"{name}: give a UTC offset, e.g. 2026-11-24T14:30:00Z")
    return value.astimezone(UTC) if value else None


@router.get("/{symbol}", response_model=CandlesOut, summary="Historical candles")
def get_candles(
    symbol: SymbolPath,
    candles: CandlesDep,
    quotes: QuotesDep,
    interval: Annotated[Interval, Query(description="Bar size")] = "1m",
    start: Annotated[
        datetime | None, Query(description="First bar start, inclusive (RFC 3339)")
    ] = None,
    end: Annotated[
        datetime | None, Query(description="Bars starting before this (RFC 3339)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Most bars to return")] = 1000,
) -> CandlesOut:
    """1-minute candles and rollups (5m, 15m, 1h aligned to New York clock time; 1d to the
    New York trading day, stamped at New York midnight), oldest first."""
    lo = _aware("start", start) or EPOCH
    hi = _aware("end", end) or datetime.now(UTC) + timedelta(days=1)
    if lo >= hi:
        raise invalid("invalid_time_range", "start must be before end")
    if not quotes.known([symbol])[0] and not candles.known_symbol(symbol):
        raise not_found("symbol_not_found", f"no market data for symbol '{symbol}'")
    bars = candles.candles(symbol, interval, lo, hi, limit)
    return CandlesOut(
        symbol=symbol,
        interval=interval,
        candles=[
            CandleOut(
                start=b.start,
                open=b.open,
                high=b.high,
                low=b.low,
                close=b.close,
                volume=b.volume,
                vwap=b.vwap,
                trades=b.trades,
            )
            for b in bars
        ],
        next_start=next_bucket_start(bars[-1].start, interval) if len(bars) == limit else None,
    )
