"""The execution side's desk for one symbol: its open orders, the venues' displayed
quotes, and the answers and fills it owes the ledger. Pure: no I/O; the execution flow
(flows/execution.py) feeds it and publishes what it returns. Message shapes are those
of schemas/oms.py; the fill model is schemas/fill_model.py.

    desk = SymbolDesk("AAPL", model=FillModel())
    desk.on_order_message({"event_id": "o:7", "kind": "new", "at": ns, "order": {...}})
        -> [{"event_id": "acknowledged:o:7", "kind": "acknowledged", ...}, fills...]
    desk.on_market({"kind": "quote", "venue": "iex", "bid_price": "10.00", ...})
        -> fills, expiries, acknowledgements (md.quotes / md.trades / md.status, decoded)
    desk.on_market_time(event_ns)   # only the feed's clock (NBBO quotes, other events)

Answers to oms.orders messages:
- new: the order is kept. A pending_new order is acknowledged at once; an accepted order
  (placed outside the regular session: held until the open) is acknowledged when the
  desk's clock, the newest event time of the symbol's feed, is in a regular session:
  at once if it already is, else when the clock enters it (`at` = the session's open).
- cancel: canceled (the order leaves the desk) if it is open here, else cancel_rejected.
- replace: only if the old order is open here and the desk's own filled quantity of it
  is still the message's expected_filled_qty, replaced (+ replaced_by): the old order
  leaves, the new one works in its place, and that same answer acknowledges it in the
  ledger. Otherwise replace_rejected (+ replaced_by, reason): the old order keeps
  working, the new one is rejected by the ledger.

Fills (README "The order side" documents them for users):
- Venues. Every venue of the feed is a simulated venue with its own displayed quote
  (the consolidated NBBO quote only moves the clock). A buy fills at a venue's ask, a
  sell at its bid, at most the displayed size per quote update: what orders take is
  consumed until the venue's next quote update. A quote made before the current session
  (pre-market, regular, after-hours) began is stale: nothing fills against it until the
  venue quotes again. The fill model decides latency, the
  share of the displayed size an order may take, a minimum and slippage.
- Routing. An order that can fill takes the venues in order of price (lowest ask for a
  buy, highest bid for a sell), then larger available size, then venue name, and sweeps
  them until it is done. Each fill names its `venue` and the sweep's `route` (every
  venue the sweep filled at, in order). A buy never fills above its reserve_price (a
  market, stop or trailing buy works as a marketable limit there) and a limit order
  never fills through its limit.
- When an order works: open orders are worked, in arrival order, after each order
  message and each market event, against the venues' quotes as they stand.
  Resting limit orders fill when a venue's quote crosses them.
- Time in force, by the feed's clock: day orders expire at the regular close (extended
  hours day orders at 20:00 New York), gtc orders never do. An order fills only in the
  regular session, except extended-hours orders, which also fill in pre- and
  after-market. ioc and fok orders are decided at their first moment to trade
  (acknowledged, past the latency, in session, some venue quoting in this session):
  ioc fills what it can and cancels the rest (reason "ioc remainder"); fok fills
  entirely or is canceled with no fill ("fok not fillable"). opg orders take part only
  at the open: when the desk sees the first venue quote of a regular session, then the
  rest expires (an opg order that arrives after that quote expires at once). cls orders
  fill only in the last minute before the close and expire at the close.
- Triggers: a stop or stop_limit order triggers on the last regular trade (a trade that
  updates the last price: sale-condition eligible) at or through its stop price (buy:
  price >= stop, sell: price <= stop) in the regular session, and becomes a market or
  limit order. Quotes and ineligible trades never trigger. A trailing stop keeps a
  mark of regular trades from its acknowledgement (seeded with the order's hwm, else
  the last regular trade the desk saw): the high-water mark for a sell, low-water for a
  buy; it triggers when a regular trade is at or below hwm − trail (sell) or at or
  above lwm + trail (buy), trail being trail_price or the mark × trail_percent / 100.
  Its fills carry the mark as "hwm".
- Halts: while any venue reports the symbol halted or paused, nothing fills or
  triggers; orders wait (an ioc or fok decided then is canceled with no fill).
- Ids: a fill's exec id, which is also its event_id, is "fill:<order id>:<n>", n the
  order's fill count at this desk (1, 2, ...); its `at` is the feed time of the event
  that made it.

Determinism, so a replay after a crash repeats itself: an answer's event_id is
"<kind>:<event_id of the message it answers>" (a held order's acknowledgement answers
its `new` message; an expiry or an ioc/fok cancel answers the message that brought the
order) and its `at` is that message's `at` (or the session open, or for fills and
expiries the feed time), never a wall clock. A message delivered twice is answered once
and changes nothing the second time: the desk remembers the ids of its last
DEDUP_WINDOW messages and closed orders; a venue quote no newer than that venue's last
one is ignored. Fills depend on how order messages and market events interleave (two
topics): the desk and the source offsets are snapshotted together, so a replay from a
snapshot reads the same inputs, though not always interleaved as before (a fill number
may come again with other contents; the ledger keeps the first and records the
conflict); orders placed before the market data they fill against give the same fills
on every replay.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from datetime import date, datetime, time, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from schemas.fill_model import FillModel
from schemas.marketdata import NBBO_VENUE, utc_from_ns, utc_to_ns
from schemas.oms import Order, order_from_wire
from schemas.order_states import OrderStatus
from schemas.orders import PRICE_PLACES, QTY_PLACES
from schemas.sessions import AFTER_HOURS, NEW_YORK, PRE_OPEN, market_session, regular_hours

Answer = dict[str, Any]
DEDUP_WINDOW = 1024
NS = 1_000_000_000
CLS_WINDOW_NS = 60 * NS  # cls orders take part in the last minute before the close
HALTED_STATES = frozenset({"halted", "paused"})
_NY = ZoneInfo(NEW_YORK)
_REQUIRED = ("id", "account_id", "symbol", "side", "type", "time_in_force", "status")
ZERO = Decimal(0)
CENT = Decimal("0.01")
_NEVER = 2**63
_IMMEDIATE = frozenset({"ioc", "fok"})
STOP_TYPES = frozenset({"stop", "stop_limit", "trailing_stop"})


def _restore(obj: Any, state: Any) -> dict[str, Any]:
    """__setstate__ for the desk's slotted dataclasses: a snapshot taken by an older
    version (fewer fields) restores with the missing fields at their defaults. Returns
    the snapshot's fields."""
    values = state[1] if isinstance(state, tuple) else state
    values = values or {}
    for f in fields(obj):
        if f.name in values:
            setattr(obj, f.name, values[f.name])
        elif f.default is not MISSING:
            setattr(obj, f.name, f.default)
        elif f.default_factory is not MISSING:
            setattr(obj, f.name, f.default_factory())
    return values


_ns = utc_to_ns


_dt = utc_from_ns


def regular_window(clock_ns: int) -> tuple[int | None, int]:
    """(open of the regular session `clock_ns` is in, or None; the first ns at which
    that answer may change). The desk asks again only past the second value."""
    session = market_session(_dt(clock_ns))
    if session.kind == "regular":
        assert session.open is not None and session.close is not None
        return _ns(session.open), _ns(session.close)
    if session.kind == "pre" and session.open is not None:
        return None, _ns(session.open)
    midnight = datetime.combine(session.day + timedelta(days=1), time(0), _NY)
    return None, _ns(midnight)


@dataclass(frozen=True, slots=True)
class Window:
    """The session kind the clock is in ("pre", "regular", "post", "closed"), since
    start_ns and for clocks below until_ns."""

    kind: str
    until_ns: int
    start_ns: int = 0


def session_window(clock_ns: int) -> Window:
    now = _dt(clock_ns)
    session = market_session(now)
    local = now.astimezone(_NY)
    day = local.date()
    start = _ns(datetime.combine(day, time(0), _NY))
    midnight = _ns(datetime.combine(day + timedelta(days=1), time(0), _NY))
    if session.open is None or session.close is None:
        return Window("closed", midnight, start)
    pre = _ns(datetime.combine(day, PRE_OPEN, _NY))
    post = _ns(session.close + AFTER_HOURS)
    bounds = sorted({start, pre, _ns(session.open), _ns(session.close), post, midnight})
    until = next(b for b in bounds if b > clock_ns)
    start = max(b for b in bounds if b <= clock_ns)
    return Window(session.kind, until, start)


def _trading_day_on_or_after(day: date) -> tuple[date, tuple[datetime, datetime]]:
    for _ in range(30):
        hours = regular_hours(day)
        if hours is not None:
            return day, hours
        day += timedelta(days=1)
    raise ValueError(f"no trading day within 30 days of {day}")


def expiry_ns(clock_ns: int, *, extended: bool) -> int:
    """When a day order that becomes active at `clock_ns` expires: the close of the
    regular session it is in or the next one (extended hours: the end of that trading
    day's after-hours, 20:00 New York or 17:00 on a half day, or of the next one's)."""
    now = _dt(clock_ns)
    day = now.astimezone(_NY).date()
    while True:
        day, (_, close) = _trading_day_on_or_after(day)
        end = close + AFTER_HOURS if extended else close
        if now < end:
            return _ns(end)
        day += timedelta(days=1)


@dataclass(slots=True)
class Venue:
    """A venue's displayed quote and what orders took of it since it was updated."""

    bid: Decimal
    bid_size: int
    ask: Decimal
    ask_size: int
    seq: int  # the quote's event time: its sequence at this venue
    bid_taken: Decimal = ZERO
    ask_taken: Decimal = ZERO


@dataclass(slots=True)
class Working:
    """An order open at this desk."""

    order: Order
    event_id: str  # the oms.orders message that brought it (its new or replace)
    acknowledged: bool  # the ledger has been told (held orders: not before the open)
    filled_qty: Decimal = ZERO  # what filled here (replaces compare it)
    filled_value: Decimal = ZERO  # sum of qty × price (notional orders)
    fills: int = 0  # fills made here: the n of the next exec id is fills + 1
    ready_ns: int = 0  # feed time from which it may fill (arrival + latency)
    triggered: bool = True  # stop, stop_limit, trailing_stop: False until triggered
    mark: Decimal | None = None  # trailing stops: the high (sell) / low (buy) water mark
    expires_ns: int | None = None  # day/opg/cls/ioc/fok: set once the clock is known
    took: dict[str, int] = field(default_factory=dict)  # venue -> quote seq it took from
    is_buy: bool = True  # cached: the side, and the price it may not fill through
    bound: Decimal | None = None

    def __post_init__(self) -> None:
        self.is_buy = self.order.side == "buy"
        self.bound = self.cap() if self.is_buy else self.limit

    def __setstate__(self, state: Any) -> None:
        values = _restore(self, state)
        if "triggered" not in values:  # from before triggers: a stop is not triggered yet
            self.triggered = self.order.type not in STOP_TYPES
            self.mark = self.order.hwm
        if "bound" not in values:
            self.__post_init__()

    @property
    def held(self) -> bool:
        return not self.acknowledged

    @property
    def buy(self) -> bool:
        return self.order.side == "buy"

    @property
    def tif(self) -> str:
        return self.order.time_in_force

    @property
    def limit(self) -> Decimal | None:
        """The limit it works with now (a triggered stop_limit has its limit_price)."""
        if self.order.type in ("limit", "stop_limit"):
            return self.order.limit_price
        return None

    def cap(self) -> Decimal | None:
        """Buys: the highest price it may fill at (its limit, and its reserve price)."""
        caps = [p for p in (self.limit, self.order.reserve_price) if p is not None]
        return min(caps) if caps else None


Fill = tuple[str, Decimal, Decimal]  # venue, qty, price


@dataclass(slots=True)
class SymbolDesk:
    """Open orders of one symbol, in arrival order, the venues' quotes and the feed's
    clock."""

    symbol: str
    orders: dict[str, Working] = field(default_factory=dict)  # by order id, arrival order
    clock_ns: int = 0  # newest feed event time seen; 0: none yet
    session_open_ns: int | None = None  # the regular session clock_ns is in, if any
    valid_until_ns: int = 0  # session_open_ns holds for clock_ns < this
    answered: OrderedDict[str, None] = field(default_factory=OrderedDict)  # message ids
    closed: OrderedDict[str, None] = field(default_factory=OrderedDict)
    model: FillModel = field(default_factory=FillModel)
    venues: dict[str, Venue] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)  # venue -> trading state
    last_price: Decimal | None = None  # the last regular trade's price
    opening_seen_ns: int = 0  # open of the session whose first venue quote was seen
    window: Window = field(default_factory=lambda: Window("closed", 0))
    opening: bool = False  # while the opening quote is being worked (opg orders)
    event_ns: int = 0  # while a market event is taken: its time (fills are stamped with it)
    holding: bool = False  # some order is held for the open
    wake_ns: int = 0  # no order expires before this (expiries are looked at from here)

    def __setstate__(self, state: Any) -> None:
        values = _restore(self, state)
        if "holding" not in values:
            self.holding = any(w.held for w in self.orders.values())

    # -- inputs -------------------------------------------------------------------------

    def on_order_message(self, msg: dict[str, Any]) -> list[Answer]:
        """Answers to one oms.orders message (none to a repeat of a recent one)."""
        event_id = str(msg["event_id"])
        if event_id in self.answered:
            return []
        handler = self._HANDLERS.get(msg.get("kind", ""))
        answers = handler(self, msg, event_id) if handler else []
        self._remember(self.answered, event_id)
        return answers

    def on_market_time(self, event_ns: int) -> list[Answer]:
        """The feed's clock moved (an event time from md.quotes, md.trades, md.status)."""
        answers = self._advance(event_ns)
        if self.orders:
            answers += self._release()
            answers += self._work_all()
        return answers

    def on_market(self, event: dict[str, Any]) -> list[Answer]:
        """One decoded md.quotes / md.trades / md.status event of this symbol."""
        event_ns = int(event["event_ns"])
        self.event_ns = event_ns
        try:
            return self._take(event, event_ns)
        finally:
            self.event_ns = 0

    def _now(self) -> int:
        """The time of what the desk is taking: the market event's own time (quotes,
        trades and states come on separate topics, so one may arrive after the clock
        moved past it), else the feed clock."""
        return self.event_ns or self.clock_ns

    def _take(self, event: dict[str, Any], event_ns: int) -> list[Answer]:
        answers = self._advance(event_ns)
        kind = event.get("kind")
        opening = False
        if kind == "quote" and event.get("venue", NBBO_VENUE) != NBBO_VENUE:
            opening = self._on_quote(event, event_ns)
        elif kind == "trade":
            self._on_trade(event)
        elif kind == "status":
            self.states[str(event["venue"])] = str(event["state"])
        if not self.orders:
            return answers
        self.opening = opening
        try:
            # held orders are released after the event is taken: at the open they meet
            # the opening quote, not the pre-market's
            answers += self._release()
            answers += self._work_all()
        finally:
            self.opening = False
        if opening:
            answers += self._expire_opg(event_ns)
        return answers

    @property
    def halted(self) -> bool:
        return any(state in HALTED_STATES for state in self.states.values())

    # -- orders -------------------------------------------------------------------------

    def _on_new(self, msg: dict[str, Any], event_id: str) -> list[Answer]:
        wire = msg.get("order") or {}
        try:
            order = self._read(wire)
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            return self._reject_unreadable(msg, event_id, wire, exc)
        key = str(order.id)
        if key in self.orders or key in self.closed:
            return []  # the same order again under another message id: already answered
        working = self._working(order, event_id, acknowledged=False)
        working.filled_qty = order.filled_qty
        self.orders[key] = working
        if order.status == OrderStatus.ACCEPTED and self._open_ns() is None:
            self.holding = True
            return []  # held until the clock enters the regular session
        return [self._answer("acknowledged", event_id, msg["at"], order), *self._activate(working)]

    def _on_cancel(self, msg: dict[str, Any], event_id: str) -> list[Answer]:
        working = self.orders.pop(str(msg["order_id"]), None)
        if working is None:
            return [self._answer_ids("cancel_rejected", event_id, msg, reason="not_open")]
        self._close(str(working.order.id))
        return [self._answer("canceled", event_id, msg["at"], working.order, reason="requested")]

    def _on_replace(self, msg: dict[str, Any], event_id: str) -> list[Answer]:
        wire = msg.get("order") or {}
        new_id = str(wire.get("id", ""))
        old = self.orders.get(str(msg["order_id"]))
        reason = ""
        if old is None:
            reason = "not_open: the order is no longer open at the execution side"
        else:
            expected = _decimal(msg.get("expected_filled_qty"))
            if expected != old.filled_qty:
                reason = (
                    f"filled_qty_changed: expected {msg.get('expected_filled_qty')}, "
                    f"filled {old.filled_qty}"
                )
        if not reason:
            try:
                new = self._read(wire)
            except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
                reason = f"unreadable replacing order: {_why(exc)}"
            else:
                if str(new.id) in self.orders or str(new.id) in self.closed:
                    reason = "invalid replacing order: its id is already known here"
        if reason:
            return [
                self._answer_ids(
                    "replace_rejected", event_id, msg, replaced_by=new_id, reason=reason
                )
            ]
        assert old is not None
        del self.orders[str(old.order.id)]
        self._close(str(old.order.id))
        # The ledger acknowledges the new order on `replaced`: it works from here on.
        working = self._working(new, event_id, acknowledged=False)
        if working.mark is None:
            working.mark = old.mark  # a replaced trailing stop keeps its mark
        self.orders[str(new.id)] = working
        replaced = self._answer("replaced", event_id, msg["at"], old.order, replaced_by=str(new.id))
        return [replaced, *self._activate(working)]

    _HANDLERS: ClassVar[dict[str, Callable[[SymbolDesk, dict[str, Any], str], list[Answer]]]] = {
        "new": _on_new,
        "cancel": _on_cancel,
        "replace": _on_replace,
    }

    def _read(self, wire: dict[str, Any]) -> Order:
        order = order_from_wire(wire)
        missing = [name for name in _REQUIRED if getattr(order, name) is None]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        if order.symbol != self.symbol:
            raise ValueError(f"an order for {order.symbol} at the {self.symbol} desk")
        return order

    def _working(self, order: Order, event_id: str, *, acknowledged: bool) -> Working:
        stop = order.type in STOP_TYPES
        return Working(
            order,
            event_id,
            acknowledged=acknowledged,
            ready_ns=self.clock_ns + self.model.latency_ns,
            triggered=not stop,
            mark=order.hwm,
        )

    def _activate(self, w: Working) -> list[Answer]:
        """The order is acknowledged: it starts working (and may fill at once)."""
        w.acknowledged = True
        if w.order.type == "trailing_stop" and w.mark is None:
            w.mark = self.last_price
        self._set_expiry(w)
        if w.tif == "opg" and self._past_opening():
            return self._end(w, "expired", self._now())
        return self._work(w)

    def _reject_unreadable(
        self, msg: dict[str, Any], event_id: str, wire: Any, exc: Exception
    ) -> list[Answer]:
        """A new order the desk cannot read is rejected if its ids are there to name it."""
        if not isinstance(wire, dict) or not wire.get("id") or not wire.get("account_id"):
            return []
        ids = {"order_id": wire["id"], "account_id": wire["account_id"]}
        reason = f"unreadable order: {_why(exc)}"
        return [self._answer_ids("rejected", event_id, {**msg, **ids}, reason=reason)]

    # -- the clock ----------------------------------------------------------------------

    def _open_ns(self) -> int | None:
        """The open of the regular session the clock is in, None outside one (or before
        the feed has said anything)."""
        if self.clock_ns == 0:
            return None
        if self.clock_ns >= self.valid_until_ns:
            self.session_open_ns, self.valid_until_ns = regular_window(self.clock_ns)
        return self.session_open_ns

    def _session(self) -> str:
        if self.clock_ns == 0:
            return "closed"
        if self.clock_ns >= self.window.until_ns:
            self.window = session_window(self.clock_ns)
        return self.window.kind

    def _past_opening(self) -> bool:
        open_ns = self._open_ns()
        return open_ns is not None and self.opening_seen_ns == open_ns and not self.opening

    def _advance(self, event_ns: int) -> list[Answer]:
        if event_ns <= self.clock_ns:
            return []
        self.clock_ns = event_ns
        if not self.orders:
            return []
        return self._clock_moved()

    def _clock_moved(self) -> list[Answer]:
        """Expiries that the clock passed (before the event at that time is taken)."""
        if self.clock_ns < self.wake_ns:
            return []
        answers: list[Answer] = []
        self.wake_ns = _NEVER
        for w in list(self.orders.values()):
            if w.expires_ns is None and w.acknowledged:
                self._set_expiry(w)
            if w.expires_ns is not None and self.clock_ns >= w.expires_ns:
                answers += self._end(w, "expired", w.expires_ns)
            elif w.expires_ns is not None:
                self.wake_ns = min(self.wake_ns, w.expires_ns)
            elif w.acknowledged and w.tif != "gtc":
                self.wake_ns = 0  # no clock yet to set its expiry by
        return answers

    def _release(self) -> list[Answer]:
        """Held orders are acknowledged, and start working, once the clock is in a
        regular session (`at` = its open)."""
        if not self.holding:
            return []
        answers: list[Answer] = []
        open_ns = self._open_ns()
        if open_ns is None:
            return answers
        self.holding = False
        for w in list(self.orders.values()):
            if w.held:
                answers.append(self._answer("acknowledged", w.event_id, open_ns, w.order))
                answers += self._activate(w)
        return answers

    def _set_expiry(self, w: Working) -> None:
        if w.tif == "gtc" or w.expires_ns is not None or self.clock_ns == 0:
            return
        w.expires_ns = expiry_ns(self.clock_ns, extended=w.order.extended_hours)
        self.wake_ns = min(self.wake_ns, w.expires_ns)

    def _expire_opg(self, at: int) -> list[Answer]:
        answers: list[Answer] = []
        for w in list(self.orders.values()):
            if w.tif == "opg" and w.acknowledged:
                answers += self._end(w, "expired", at)
        return answers

    # -- market data --------------------------------------------------------------------

    def _on_quote(self, q: dict[str, Any], event_ns: int) -> bool:
        """Take a venue's quote; True when it is the session's opening quote."""
        venue = str(q["venue"])
        old = self.venues.get(venue)
        if old is not None and event_ns <= old.seq:
            return False  # a repeat or an older quote: the displayed size stays consumed
        self.venues[venue] = Venue(
            Decimal(q["bid_price"]),
            int(q["bid_size"]),
            Decimal(q["ask_price"]),
            int(q["ask_size"]),
            event_ns,
        )
        open_ns = self._open_ns()
        if open_ns is not None and self.opening_seen_ns != open_ns and event_ns >= open_ns:
            self.opening_seen_ns = open_ns
            return True
        return False

    def _on_trade(self, t: dict[str, Any]) -> None:
        if not t.get("updates_last", True):
            return  # not a regular trade: moves no last price, triggers nothing
        price = Decimal(t["price"])
        self.last_price = price
        if self.halted or self._session() != "regular":
            return
        for w in self.orders.values():
            if w.triggered or not w.acknowledged or self.clock_ns < w.ready_ns:
                continue
            o = w.order
            if o.type == "trailing_stop":
                w.triggered = self._trail(w, price)
            elif o.stop_price is not None:
                w.triggered = price >= o.stop_price if w.buy else price <= o.stop_price

    def _trail(self, w: Working, price: Decimal) -> bool:
        """Move the mark with a regular trade; whether the trade triggers the order."""
        o = w.order
        if w.mark is None:
            w.mark = price
        w.mark = min(w.mark, price) if w.buy else max(w.mark, price)
        if o.trail_price is not None:
            trail = o.trail_price
        else:
            assert o.trail_percent is not None
            trail = w.mark * o.trail_percent / 100
        return price >= w.mark + trail if w.buy else price <= w.mark - trail

    # -- filling ------------------------------------------------------------------------

    def _work_all(self) -> list[Answer]:
        """Work every open order. A resting order that the best fresh price of any venue
        does not reach is skipped before planning: no venue could fill it (this keeps a
        quote's cost low for a symbol with many resting orders)."""
        answers: list[Answer] = []
        best: tuple[Decimal | None, Decimal | None] | None = None
        for w in list(self.orders.values()):
            if not w.acknowledged or not w.triggered:
                continue
            if w.order.time_in_force not in _IMMEDIATE:
                if best is None:
                    best = self._best()
                price = best[0] if w.is_buy else best[1]
                if price is None:
                    continue
                limit = w.bound
                if limit is not None and (price > limit if w.is_buy else price < limit):
                    continue
            out = self._work(w)
            if out:
                answers += out
                best = None  # sizes were taken
        return answers

    def _best(self) -> tuple[Decimal | None, Decimal | None]:
        """(lowest ask, highest bid) of the venues quoting in this session segment with
        size left."""
        self._session()
        fresh_from = self.window.start_ns
        ask = bid = None
        for v in self.venues.values():
            if v.seq < fresh_from:
                continue
            if v.ask > 0 and v.ask_size > v.ask_taken and (ask is None or v.ask < ask):
                ask = v.ask
            if v.bid > 0 and v.bid_size > v.bid_taken and (bid is None or v.bid > bid):
                bid = v.bid
        return ask, bid

    def _in_session(self, w: Working) -> bool:
        """Whether the order may trade now, halts aside."""
        if not w.acknowledged or not w.triggered or self.clock_ns < w.ready_ns:
            return False
        session = self._session()
        if w.tif == "opg":
            return self.opening
        if w.tif == "cls":
            close = w.expires_ns
            return close is not None and close - CLS_WINDOW_NS <= self.clock_ns < close
        if session == "regular":
            return True
        return w.order.extended_hours and session in ("pre", "post")

    def _work(self, w: Working) -> list[Answer]:
        """Fill what the order can take now; ioc/fok remainders end here."""
        if not self._in_session(w):
            return []
        immediate = w.tif in ("ioc", "fok")
        if self.halted:
            if not immediate:
                return []
            reason = "ioc remainder" if w.tif == "ioc" else "fok not fillable"
            return self._end(w, "canceled", self._now(), reason=reason)
        if immediate and not self._live():
            return []  # decided once some venue quotes in this session
        plan = self._plan(w)
        if w.tif == "fok" and not self._completes(w, plan):
            return self._end(w, "canceled", self._now(), reason="fok not fillable")
        answers = self._commit(w, plan)
        if str(w.order.id) not in self.orders:
            return answers  # filled
        if w.tif == "ioc":
            answers += self._end(w, "canceled", self._now(), reason="ioc remainder")
        return answers

    def _live(self) -> bool:
        """Whether some venue has quoted since the current session segment began."""
        self._session()
        return any(v.seq >= self.window.start_ns for v in self.venues.values())

    def _left(self, w: Working) -> tuple[Decimal | None, Decimal | None]:
        """(quantity, notional) still to fill; one of them is None."""
        o = w.order
        if o.notional is not None:
            return None, o.notional - w.filled_value
        assert o.qty is not None
        return o.qty - w.filled_qty, None

    def _done(self, w: Working) -> bool:
        o = w.order
        if o.notional is not None:
            return o.notional - _money(w.filled_value) < CENT
        return w.filled_qty >= (o.qty or ZERO)

    def _plan(self, w: Working) -> list[Fill]:
        """The fills a sweep of the venues would make now, best venue first."""
        buy, model, order_id = w.buy, self.model, str(w.order.id)
        cap = w.cap() if buy else None
        floor = None if buy else w.limit
        candidates = []
        self._session()
        fresh_from = self.window.start_ns
        for name, v in self.venues.items():
            if v.seq < fresh_from or w.took.get(name) == v.seq:
                continue  # quoted before this session, or it took its share already
            if buy:
                price, size, taken = v.ask, v.ask_size, v.ask_taken
            else:
                price, size, taken = v.bid, v.bid_size, v.bid_taken
            if price <= 0 or size <= 0:
                continue
            if (cap is not None and price > cap) or (floor is not None and price < floor):
                continue
            available = min(size - taken, model.available(size, order_id, name, v.seq))
            if available <= 0:
                continue
            candidates.append((price if buy else -price, -available, name, price, available))
        candidates.sort()
        qty_left, cash_left = self._left(w)
        plan: list[Fill] = []
        for _, _, name, quoted, available in candidates:
            price = model.buy_price(quoted) if buy else model.sell_price(quoted)
            if cap is not None:
                price = min(price, cap)
            if floor is not None:
                price = max(price, floor)
            if qty_left is not None:
                qty = min(qty_left, available)
                completes = qty == qty_left
            else:
                assert cash_left is not None
                qty = min((cash_left / price).quantize(QTY_PLACES, ROUND_FLOOR), available)
                completes = cash_left - qty * price < CENT
            if qty <= 0 or (qty < model.min_qty and not completes):
                continue
            plan.append((name, qty, price))
            if qty_left is not None:
                qty_left -= qty
            else:
                assert cash_left is not None
                cash_left -= qty * price
            if completes:
                break
        return plan

    def _completes(self, w: Working, plan: list[Fill]) -> bool:
        qty_left, cash_left = self._left(w)
        if qty_left is not None:
            return sum((q for _, q, _ in plan), ZERO) >= qty_left
        assert cash_left is not None
        return cash_left - sum((q * p for _, q, p in plan), ZERO) < CENT

    def _commit(self, w: Working, plan: list[Fill]) -> list[Answer]:
        route = [name for name, _, _ in plan]
        answers: list[Answer] = []
        for name, qty, price in plan:
            v = self.venues[name]
            if w.buy:
                v.ask_taken += qty
            else:
                v.bid_taken += qty
            w.took[name] = v.seq
            w.fills += 1
            w.filled_qty += qty
            w.filled_value += qty * price
            exec_id = f"fill:{w.order.id}:{w.fills}"
            extra: dict[str, Any] = {}
            if w.order.type == "trailing_stop" and w.mark is not None:
                extra["hwm"] = str(w.mark)
            answers.append(
                {
                    "event_id": exec_id,
                    "kind": "fill",
                    "at": self._now(),
                    "order_id": str(w.order.id),
                    "account_id": str(w.order.account_id),
                    "symbol": self.symbol,
                    "exec_id": exec_id,
                    "qty": str(qty.quantize(QTY_PLACES)),
                    "price": str(price.quantize(PRICE_PLACES)),
                    "venue": name,
                    "route": route,
                    **extra,
                }
            )
        if plan and self._done(w):
            del self.orders[str(w.order.id)]
            self._close(str(w.order.id))
        return answers

    def _end(self, w: Working, kind: str, at: int, **extra: Any) -> list[Answer]:
        """The desk ends an order on its own: expired, or an ioc/fok remainder canceled."""
        if self.orders.pop(str(w.order.id), None) is None:
            return []
        self._close(str(w.order.id))
        return [self._answer(kind, w.event_id, at, w.order, **extra)]

    # -- answers ------------------------------------------------------------------------

    def _answer(self, kind: str, source: str, at: int, order: Order, **extra: Any) -> Answer:
        return {
            "event_id": f"{kind}:{source}",
            "kind": kind,
            "at": int(at),
            "order_id": str(order.id),
            "account_id": str(order.account_id),
            "symbol": order.symbol,
            **extra,
        }

    def _answer_ids(self, kind: str, source: str, msg: dict[str, Any], **extra: Any) -> Answer:
        """An answer about an order the desk does not hold: ids from the message."""
        return {
            "event_id": f"{kind}:{source}",
            "kind": kind,
            "at": int(msg["at"]),
            "order_id": str(msg["order_id"]),
            "account_id": str(msg["account_id"]),
            "symbol": msg.get("symbol", self.symbol),
            **extra,
        }

    def _close(self, order_id: str) -> None:
        self._remember(self.closed, order_id)

    @staticmethod
    def _remember(window: OrderedDict[str, None], key: str) -> None:
        window[key] = None
        if len(window) > DEDUP_WINDOW:
            window.popitem(last=False)


def _money(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.0001"), ROUND_HALF_EVEN)


def _decimal(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _why(exc: Exception) -> str:
    if isinstance(exc, InvalidOperation):  # its text is a list of signal classes
        return "a field is not a decimal number"
    return f"{type(exc).__name__}: {exc}"
