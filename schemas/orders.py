"""Order placement rules and reservations. Pure: the caller supplies the market's state.

`place(request, market)` either raises `OrderRefused` (a 422 rule, with a code) or
returns the `Placement`: the status the order starts in, the worst price its
reservation covers, and the cash or shares to reserve. The ledger then reserves
atomically and refuses with 403 when the account cannot cover it.

The rules (README "Orders" documents them for users):
- qty (up to 6 decimal places) or notional (dollars, up to 2 places), never both;
  notional only for market orders with time_in_force day; fractional qty only with
  time_in_force day and not for trailing stops.
- Prices where the type needs them and nowhere else: limit needs limit_price; stop
  needs stop_price; stop_limit both; trailing_stop exactly one of trail_price and
  trail_percent (0 < % < 100). Prices on the tick: 0.01 at or above $1, 0.0001 below.
- time_in_force: day and gtc for every type; opg and cls for market and limit; ioc and
  fok for market and limit. opg is refused from 09:28 New York until the close, cls
  from 15:50 (12:50 on half days): the auctions' cut-offs.
- extended_hours only for limit orders with time_in_force day.
- The symbol must be in a venue's security directory as a non-test issue.
- Halted symbols: orders that would execute at market (market, stop, trailing_stop)
  are refused (`symbol_halted`); limit and stop_limit orders are accepted and rest
  without fills until trading resumes.
- Outside the regular session, orders are accepted and held (`accepted`) until the
  next regular open; an extended_hours limit order works at once in pre- and
  after-market hours.
- Reservations (buys, cash): limit and stop_limit reserve qty × limit_price; market,
  stop and trailing_stop orders reserve qty × their reserve price, which is the ask
  (market), the higher of stop and ask (stop), or the ask plus the trail (trailing),
  raised by the 5 % collar; a notional buy reserves the notional. The execution side
  never fills a buy above its reserve price (it works as a marketable limit there).
  Sells reserve shares (no short selling): qty, or for a notional sell the shares
  the notional buys at the bid lowered by the collar.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from decimal import ROUND_CEILING, Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo

from schemas.order_states import OrderStatus
from schemas.sessions import MarketSession

PRICE_PLACES = Decimal("0.0001")
CASH_PLACES = Decimal("0.0001")
QTY_PLACES = Decimal("0.000001")
NOTIONAL_PLACES = Decimal("0.01")
COLLAR = Decimal("0.05")
MAX_QTY = Decimal(10_000_000)
MAX_PRICE = Decimal(1_000_000)
MAX_NOTIONAL = Decimal(1_000_000_000)
CLIENT_ORDER_ID_MAX = 128
OPG_CUTOFF = (9, 28)
CLS_CUTOFF = (15, 50)
CLS_BEFORE_CLOSE = timedelta(minutes=10)


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"
    TRAILING_STOP = "trailing_stop"


class TimeInForce(StrEnum):
    DAY = "day"
    GTC = "gtc"
    OPG = "opg"
    CLS = "cls"
    IOC = "ioc"
    FOK = "fok"


T, F = OrderType, TimeInForce
ALLOWED_TIF: dict[OrderType, frozenset[TimeInForce]] = {
    T.MARKET: frozenset(TimeInForce),
    T.LIMIT: frozenset(TimeInForce),
    T.STOP: frozenset({F.DAY, F.GTC}),
    T.STOP_LIMIT: frozenset({F.DAY, F.GTC}),
    T.TRAILING_STOP: frozenset({F.DAY, F.GTC}),
}
AT_MARKET = frozenset({T.MARKET, T.STOP, T.TRAILING_STOP})


class OrderRefused(Exception):
    """A placement rule the request breaks: HTTP 422 (or `status`) with a stable code."""

    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True, slots=True)
class OrderRequest:
    symbol: str
    side: Side
    type: OrderType
    time_in_force: TimeInForce
    qty: Decimal | None = None
    notional: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    extended_hours: bool = False


@dataclass(frozen=True, slots=True)
class MarketView:
    """What placement needs to know about the symbol and the clock right now."""

    now: datetime
    session: MarketSession
    tradable: bool  # listed, non-test, in some venue's security directory
    halted: bool
    bid: Decimal | None = None  # NBBO; None when there is no two-sided quote
    ask: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Placement:
    status: OrderStatus
    reserve_price: Decimal | None  # worst price the reservation covers (buys: a cap)
    reserve_cash: Decimal = Decimal(0)
    reserve_qty: Decimal = Decimal(0)
    notes: tuple[str, ...] = field(default=())


def _places(value: Decimal) -> int:
    exp = value.normalize().as_tuple().exponent
    return -exp if isinstance(exp, int) and exp < 0 else 0


def tick_of(price: Decimal) -> Decimal:
    return Decimal("0.01") if price >= 1 else Decimal("0.0001")


def on_tick(price: Decimal) -> bool:
    return price % tick_of(price) == 0


def _price(name: str, value: Decimal) -> None:
    if not value.is_finite() or value <= 0:
        raise OrderRefused("invalid_price", f"{name} must be a positive number")
    if value > MAX_PRICE:
        raise OrderRefused("invalid_price", f"{name} must be at most {MAX_PRICE}")
    if not on_tick(value):
        raise OrderRefused(
            "invalid_tick",
            f"{name} {value} is not on the tick: {tick_of(value)} for prices "
            + ("at or above $1" if value >= 1 else "below $1"),
        )


def _amounts(req: OrderRequest) -> None:
    if req.qty is not None and req.notional is not None:
        raise OrderRefused("qty_and_notional", "give qty or notional, not both")
    if req.qty is None and req.notional is None:
        raise OrderRefused("qty_required", "give qty (shares) or notional (dollars)")
    if req.qty is not None:
        if not req.qty.is_finite() or req.qty <= 0:
            raise OrderRefused("invalid_qty", "qty must be positive")
        if _places(req.qty) > 6:
            raise OrderRefused("invalid_qty", "qty has at most 6 decimal places")
        if req.qty > MAX_QTY:
            raise OrderRefused("invalid_qty", f"qty must be at most {MAX_QTY}")
        fractional = req.qty != req.qty.to_integral_value()
        if fractional and (req.time_in_force != F.DAY or req.type == T.TRAILING_STOP):
            raise OrderRefused(
                "fractional_not_allowed",
                "fractional qty needs time_in_force day and is not for trailing stops",
            )
    if req.notional is not None:
        if not req.notional.is_finite() or req.notional <= 0:
            raise OrderRefused("invalid_notional", "notional must be positive")
        if _places(req.notional) > 2:
            raise OrderRefused("invalid_notional", "notional is in dollars and cents")
        if req.notional > MAX_NOTIONAL:
            raise OrderRefused("invalid_notional", f"notional must be at most {MAX_NOTIONAL}")
        if req.type != T.MARKET or req.time_in_force != F.DAY:
            raise OrderRefused(
                "notional_not_allowed", "notional orders are market orders with time_in_force day"
            )


_NEEDS: dict[OrderType, tuple[str, ...]] = {
    T.MARKET: (),
    T.LIMIT: ("limit_price",),
    T.STOP: ("stop_price",),
    T.STOP_LIMIT: ("limit_price", "stop_price"),
    T.TRAILING_STOP: (),
}
_PRICE_FIELDS = ("limit_price", "stop_price", "trail_price", "trail_percent")


def _prices(req: OrderRequest) -> None:
    needs = _NEEDS[req.type]
    for name in _PRICE_FIELDS:
        value = getattr(req, name)
        wanted = name in needs or (req.type == T.TRAILING_STOP and name.startswith("trail"))
        if value is not None and not wanted:
            raise OrderRefused("unexpected_price", f"{req.type} orders take no {name}")
        if value is None and name in needs:
            raise OrderRefused("missing_price", f"{req.type} orders need {name}")
    for name in ("limit_price", "stop_price", "trail_price"):
        value = getattr(req, name)
        if value is not None:
            _price(name, value)
    if req.type == T.TRAILING_STOP:
        if (req.trail_price is None) == (req.trail_percent is None):
            raise OrderRefused(
                "missing_price" if req.trail_price is None else "unexpected_price",
                "trailing_stop orders need exactly one of trail_price and trail_percent",
            )
        pct = req.trail_percent
        if pct is not None and (not pct.is_finite() or not 0 < pct < 100 or _places(pct) > 4):
            raise OrderRefused(
                "invalid_trail_percent", "trail_percent is between 0 and 100, 4 places at most"
            )


def _time_in_force(req: OrderRequest, market: MarketView) -> None:
    if req.time_in_force not in ALLOWED_TIF[req.type]:
        allowed = ", ".join(sorted(ALLOWED_TIF[req.type]))
        raise OrderRefused(
            "invalid_time_in_force",
            f"{req.type} orders take time_in_force {allowed}, not {req.time_in_force}",
        )
    if req.extended_hours and (req.type != T.LIMIT or req.time_in_force != F.DAY):
        raise OrderRefused(
            "extended_hours_not_allowed",
            "extended_hours is for limit orders with time_in_force day",
        )
    cutoff = {F.OPG: OPG_CUTOFF, F.CLS: CLS_CUTOFF}.get(req.time_in_force)
    session = market.session
    if cutoff and session.close is not None:
        # From the cut-off (09:28 is still pre-market) until the close of a trading day;
        # on half days the closing auction's cut-off is 10 minutes before the close.
        ny = ZoneInfo("America/New_York")
        start = datetime.combine(session.day, time(*cutoff), ny)
        if req.time_in_force == F.CLS:
            start = min(start, session.close - CLS_BEFORE_CLOSE)
        if start <= market.now < session.close:
            name = "opening" if req.time_in_force == F.OPG else "closing"
            raise OrderRefused(
                "auction_closed",
                f"the {name} auction takes {req.time_in_force} orders until "
                f"{start.astimezone(ny):%H:%M} New York",
            )


def _up(value: Decimal, places: Decimal) -> Decimal:
    return value.quantize(places, ROUND_CEILING)


def _down(value: Decimal, places: Decimal) -> Decimal:
    return value.quantize(places, rounding="ROUND_FLOOR")


def reserve_price(req: OrderRequest, market: MarketView) -> Decimal | None:
    """The worst price a buy's reservation covers, or a sell's floor for notional sells."""
    if req.side == Side.BUY:
        if req.type in (T.LIMIT, T.STOP_LIMIT):
            return req.limit_price
        ask = market.ask
        if req.type == T.STOP:
            assert req.stop_price is not None
            base = max(req.stop_price, ask) if ask is not None else req.stop_price
        elif ask is None:
            raise OrderRefused("no_quote", f"no ask for {req.symbol} to price a {req.type} buy")
        elif req.type == T.TRAILING_STOP:
            if req.trail_price is not None:
                base = ask + req.trail_price
            else:
                assert req.trail_percent is not None
                base = ask * (1 + req.trail_percent / 100)
        else:
            base = ask
        return _up(base * (1 + COLLAR), PRICE_PLACES)
    if req.notional is not None:
        if market.bid is None or market.bid <= 0:
            raise OrderRefused("no_quote", f"no bid for {req.symbol} to size a notional sell")
        return _down(market.bid * (1 - COLLAR), PRICE_PLACES)
    return req.limit_price


def initial_status(req: OrderRequest, session: MarketSession) -> OrderStatus:
    """accepted (held for the next regular open) or pending_new (works at once)."""
    if session.kind == "regular":
        return OrderStatus.PENDING_NEW
    if req.extended_hours and session.kind in ("pre", "post"):
        return OrderStatus.PENDING_NEW
    return OrderStatus.ACCEPTED


def place(req: OrderRequest, market: MarketView) -> Placement:
    """The placement of a valid request; OrderRefused names the first rule it breaks."""
    _amounts(req)
    _prices(req)
    _time_in_force(req, market)
    if not market.tradable:
        raise OrderRefused("symbol_not_tradable", f"{req.symbol} is not a tradable security")
    if market.halted and req.type in AT_MARKET:
        raise OrderRefused(
            "symbol_halted",
            f"{req.symbol} is halted: {req.type} orders are refused until trading resumes "
            "(limit and stop_limit orders are accepted and rest)",
        )
    price = reserve_price(req, market)
    status = initial_status(req, market.session)
    if req.side == Side.BUY:
        if req.notional is not None:
            cash = req.notional
        else:
            assert req.qty is not None and price is not None
            cash = _up(req.qty * price, CASH_PLACES)
        return Placement(status, price, reserve_cash=cash)
    if req.notional is not None:
        assert price is not None
        shares = _up(req.notional / price, QTY_PLACES)
    else:
        assert req.qty is not None
        shares = req.qty
    return Placement(status, price, reserve_qty=shares)


def full_reservation(
    side: str,
    qty: Decimal | None,
    notional: Decimal | None,
    reserve_price: Decimal | None,
    filled_qty: Decimal = Decimal(0),
) -> tuple[Decimal, Decimal]:
    """(cash, shares) an order with these terms reserves while nothing of it has filled
    beyond filled_qty; the same arithmetic as `place`, for replaces and invariant checks."""
    if side == Side.BUY:
        if notional is not None:
            return notional, Decimal(0)
        assert qty is not None and reserve_price is not None
        return _up((qty - filled_qty) * reserve_price, CASH_PLACES), Decimal(0)
    if notional is not None:
        assert reserve_price is not None
        return Decimal(0), _up(notional / reserve_price, QTY_PLACES)
    assert qty is not None
    return Decimal(0), qty - filled_qty
