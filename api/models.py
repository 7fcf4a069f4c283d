"""Public response shapes. Money is a decimal string, never a JSON number."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
)

from api.errors import ErrorBody
from infra.accounts import AccountStatus

Money = Annotated[Decimal, PlainSerializer(lambda d: str(d), return_type=str)]
MAX_DECIMAL_TEXT = 40


def _exact_decimal(value: Any) -> Decimal:
    """A decimal from a JSON string or number, exactly as written. The bodies that use this
    are parsed with api.body.parse (json.loads with parse_float=Decimal), so a JSON number
    never passes through a float; a float reaching here is refused."""
    if isinstance(value, bool | float):
        raise ValueError('give a decimal number or a string such as "10.25"')
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, str) and len(value) <= MAX_DECIMAL_TEXT:
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
    else:
        raise ValueError('give a decimal number or a string such as "10.25"')
    if not d.is_finite():
        raise ValueError("must be a finite number")
    return d


# Accepted as a JSON string ("10.25", the form every answer uses) or number (10.25).
ExactDecimal = Annotated[
    Decimal,
    BeforeValidator(_exact_decimal),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}], "examples": ["10.25"]}),
]
Interval = Literal["1m", "5m", "15m", "1h", "1d"]


# The dates history and report routes take (query parameters outside answer 422): a day
# arithmetic on year 1 or 9999 overflows datetime.
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(2100, 12, 31)


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
    cash: Money = Field(description="Cash in the account, reserved cash included")
    reserved_cash: Money = Field(description="What open buy orders reserve (worst case)")
    buying_power: Money = Field(description="cash - reserved_cash: what a new buy may use")
    long_market_value: Money = Field(
        description="Sum over positions of qty x the NBBO midpoint (the average cost when "
        "there is no two-sided quote)"
    )
    equity: Money = Field(description="cash + long_market_value")


class DepositIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: ExactDecimal = Field(description='Dollars and cents, positive, e.g. "10000"')
    note: Annotated[str, StringConstraints(max_length=200)] = ""


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


# --------------------------------------------------------------------------- orders

Side = Literal["buy", "sell"]
OrderTypeName = Literal["market", "limit", "stop", "stop_limit", "trailing_stop"]
TimeInForceName = Literal["day", "gtc", "opg", "cls", "ioc", "fok"]
ClientOrderId = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class OrderIn(BaseModel):
    """A new order. Decimals as JSON strings or numbers, read exactly (never via float)."""

    model_config = ConfigDict(extra="forbid")

    symbol: Annotated[str, StringConstraints(min_length=1, max_length=12)]
    side: Side
    type: OrderTypeName
    time_in_force: TimeInForceName
    qty: ExactDecimal | None = Field(default=None, description="Shares, up to 6 places")
    notional: ExactDecimal | None = Field(default=None, description="Dollars (market, day)")
    limit_price: ExactDecimal | None = None
    stop_price: ExactDecimal | None = None
    trail_price: ExactDecimal | None = None
    trail_percent: ExactDecimal | None = None
    extended_hours: StrictBool = False
    client_order_id: ClientOrderId | None = Field(
        default=None, description="Unique per account; the order id when omitted"
    )


class ReplaceIn(BaseModel):
    """The terms to change; the others are the old order's."""

    model_config = ConfigDict(extra="forbid")

    qty: ExactDecimal | None = None
    limit_price: ExactDecimal | None = None
    stop_price: ExactDecimal | None = None
    trail: ExactDecimal | None = Field(
        default=None, description="The new trail_price or trail_percent, whichever the order has"
    )
    time_in_force: TimeInForceName | None = None
    client_order_id: ClientOrderId | None = None


OptMoney = Money | None


class OrderOut(BaseModel):
    """An order, shaped like Alpaca's order object. Decimals are strings."""

    id: UUID
    client_order_id: str
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None = Field(description="When the execution side took it")
    filled_at: datetime | None
    expired_at: datetime | None
    canceled_at: datetime | None
    failed_at: datetime | None = Field(description="When it was rejected")
    replaced_at: datetime | None
    replaced_by: UUID | None
    replaces: UUID | None
    symbol: str
    side: Side
    type: OrderTypeName
    time_in_force: TimeInForceName
    qty: OptMoney
    notional: OptMoney
    filled_qty: Money
    filled_avg_price: OptMoney
    limit_price: OptMoney
    stop_price: OptMoney
    trail_price: OptMoney
    trail_percent: OptMoney
    hwm: OptMoney = Field(description="Trailing stops: the high (sells) or low (buys) water mark")
    extended_hours: bool
    status: str = Field(
        description="accepted, pending_new, new, partially_filled, filled, pending_cancel, "
        "pending_replace, canceled, expired, replaced, rejected"
    )
    reject_reason: str | None
    reserve_price: OptMoney = Field(
        description="The worst price the reservation covers: a buy never fills above it"
    )
    reserved_cash: Money = Field(description="Cash this order holds now (buys)")
    reserved_qty: Money = Field(description="Shares this order holds now (sells)")
    version: int = Field(description="Rises with every change of the order")


class CancelResultOut(BaseModel):
    id: UUID
    status: int = Field(description="HTTP status of this order's cancel request")
    body: OrderOut | ErrorBody
