"""Public response shapes. Money is a decimal string, never a JSON number."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, Field, PlainSerializer, StringConstraints

from infra.accounts import AccountStatus

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


# ----------------------------------------------------------------- accounts and keys
# Input models (…In) are what a client sends; output models (…Out) what it reads back.

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class AccountOut(BaseModel):
    id: UUID
    account_number: str
    status: AccountStatus
    currency: str = Field(description="ISO 4217; USD for now")
    created_at: datetime


class KeyIn(BaseModel):
    name: Name = Field(description="A label to tell keys apart, e.g. 'trading bot'")


class KeyOut(BaseModel):
    """A key as listed: its secret is never shown again, its hash never at all."""

    key_id: str
    name: str
    created_at: datetime
    last_used_at: datetime | None = Field(description="Precise to about a minute")
    revoked_at: datetime | None
    rate_limit_per_minute: int


class KeyCreatedOut(KeyOut):
    secret: str = Field(description="Shown only in this response; store it now")
    token: str = Field(description="What to send: Authorization: Bearer <token>")


# ----------------------------------------------------------------------- watchlists


class WatchlistIn(BaseModel):
    name: Name
    symbols: list[str] = Field(default_factory=list, description="Tickers, in display order")


class WatchlistUpdateIn(BaseModel):
    name: Name | None = Field(default=None, description="A new name; omit to keep it")
    symbols: list[str] | None = Field(
        default=None, description="Replaces every symbol, in this order; omit to keep them"
    )


class WatchlistSymbolIn(BaseModel):
    symbol: str = Field(description="Ticker to append, e.g. AAPL")


class WatchlistOut(BaseModel):
    id: UUID
    account_id: UUID
    name: str
    created_at: datetime
    updated_at: datetime
    symbols: list[str] = Field(description="In display order")


class WatchlistAssetOut(BaseModel):
    symbol: str
    quote: QuoteOut | None = Field(description="Latest NBBO; null when there is none")
    last_price: Money | None = Field(
        description="Close of the newest 1-minute candle that has one (the last trade that "
        "sets a last price); null when no trade is on record"
    )
    previous_close: Money | None = Field(
        description="Close of the trading day before the last price's New York day; null "
        "when no candle of that day is on record"
    )
    change: Money | None = Field(description="last_price - previous_close; null if unknown")
    change_percent: Money | None = Field(
        description="change / previous_close in percent, 4 places; null if unknown"
    )


class WatchlistDetailOut(WatchlistOut):
    assets: list[WatchlistAssetOut] = Field(description="One per symbol, in display order")
