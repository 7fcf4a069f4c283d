"""Public response shapes. Money is a decimal string, never a JSON number."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, Field, PlainSerializer

Money = Annotated[Decimal, PlainSerializer(lambda d: str(d), return_type=str)]
Interval = Literal["1m", "5m", "15m", "1h", "1d"]


class QuoteOut(BaseModel):
    bid_price: Money
    bid_size: int
    ask_price: Money
    ask_size: int
    as_of: str = Field(description="Event time of the quote, RFC 3339 UTC with nanoseconds")
    stale: bool = Field(description="True when this quote has not been updated for over 5 s")


class VenueStatusOut(BaseModel):
    state: Literal["halted", "paused", "trading", "quoting"]
    reason: str
    as_of: str


class SymbolQuoteOut(BaseModel):
    symbol: str
    as_of: str | None = Field(description="Event time of the newest quote of any venue")
    stale: bool
    halted: bool = Field(description="True when any venue reports the symbol halted or paused")
    nbbo: QuoteOut | None = Field(description="Consolidated best bid and offer across venues")
    venues: dict[str, QuoteOut]
    status: dict[str, VenueStatusOut]


class QuotesOut(BaseModel):
    quotes: dict[str, SymbolQuoteOut]


class CandleOut(BaseModel):
    start: datetime
    open: Money | None
    high: Money | None
    low: Money | None
    close: Money | None
    volume: int
    vwap: Money | None
    trades: int


class CandlesOut(BaseModel):
    symbol: str
    interval: Interval
    candles: list[CandleOut]
    next_start: datetime | None = Field(
        description="Pass as start to read the next page; null when this page is the last"
    )
