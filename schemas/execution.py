"""The execution side's desk for one symbol: its open orders and the answers it owes the
ledger. Pure: no I/O; the execution flow (flows/execution.py) feeds it and publishes what
it returns. Message shapes are those of schemas/oms.py.

    desk = SymbolDesk("AAPL")
    desk.on_order_message({"event_id": "o:7", "kind": "new", "at": ns, "order": {...}})
        -> [{"event_id": "acknowledged:o:7", "kind": "acknowledged", ...}]
    desk.on_market_time(event_ns)   # the feed's clock for this symbol (md.quotes/trades)
        -> acknowledgements of held orders when the regular session opens

The answers, per oms.orders message:
- new: the order is kept. A pending_new order is acknowledged at once; an accepted order
  (placed outside the regular session: held until the open) is acknowledged when the
  desk's clock, the newest event time of the symbol's feed, is in a regular session:
  at once if it already is, else when the clock enters it (`at` = the session's open).
- cancel: canceled (the order leaves the desk) if it is open here, else cancel_rejected.
- replace: only if the old order is open here and its filled quantity is still the
  message's expected_filled_qty, replaced (+ replaced_by): the old order leaves, the new
  one works in its place, and that same answer acknowledges it in the ledger. Otherwise
  replace_rejected (+ replaced_by, reason): the old order keeps working, the new one is
  rejected by the ledger.

Determinism, so a replay after a crash repeats itself: an answer's event_id is
"<kind>:<event_id of the message it answers>" (a held order's acknowledgement answers
its `new` message) and its `at` is that message's `at` (or the session open), never a
wall clock. A message delivered twice is answered once and changes nothing the second
time: the desk remembers the ids of its last DEDUP_WINDOW messages and closed orders.
What the answers decide depends only on the order messages, which reach one symbol's
desk in one partition's order; the feed clock only decides *when* a held order is
acknowledged, never its id.

Extension points for issue 5 (not built here): fills against the venues' quotes
(`on_quote`, marking `Working.filled_qty`), stop and trailing-stop triggers
(`on_trade`), time in force (expiry at the close in `_clock_moved`, opg/cls auctions,
ioc/fok remainders as unprompted `canceled`), and halts. `_on_new` is where a
marketable order would first meet the book. Fills will depend on how quotes and orders
interleave, which two topics do not fix: their ids and decisions must stay the same
when the flow replays from a snapshot (e.g. sequence the desk's inputs deterministically).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from schemas.oms import Order, order_from_wire
from schemas.order_states import OrderStatus
from schemas.sessions import NEW_YORK, market_session

Answer = dict[str, Any]
DEDUP_WINDOW = 1024
NS = 1_000_000_000
_NY = ZoneInfo(NEW_YORK)
_REQUIRED = ("id", "account_id", "symbol", "side", "type", "time_in_force", "status")


def _ns(at: datetime) -> int:
    return int(at.timestamp()) * NS + at.microsecond * 1000


def regular_window(clock_ns: int) -> tuple[int | None, int]:
    """(open of the regular session `clock_ns` is in, or None; the first ns at which
    that answer may change). The desk asks again only past the second value."""
    now = datetime.fromtimestamp(clock_ns // NS, UTC).replace(microsecond=clock_ns % NS // 1000)
    session = market_session(now)
    if session.kind == "regular":
        assert session.open is not None and session.close is not None
        return _ns(session.open), _ns(session.close)
    if session.kind == "pre" and session.open is not None:
        return None, _ns(session.open)
    midnight = datetime.combine(session.day + timedelta(days=1), time(0), _NY)
    return None, _ns(midnight)


@dataclass(slots=True)
class Working:
    """An order open at this desk."""

    order: Order
    event_id: str  # the oms.orders message that brought it (its new or replace)
    acknowledged: bool  # the ledger has been told (held orders: not before the open)
    filled_qty: Decimal = Decimal(0)  # issue 5: fills add here

    @property
    def held(self) -> bool:
        return not self.acknowledged


@dataclass(slots=True)
class SymbolDesk:
    """Open orders of one symbol, in arrival order, and the feed's clock."""

    symbol: str
    orders: dict[str, Working] = field(default_factory=dict)  # by order id, arrival order
    clock_ns: int = 0  # newest feed event time seen; 0: none yet
    session_open_ns: int | None = None  # the regular session clock_ns is in, if any
    valid_until_ns: int = 0  # session_open_ns holds for clock_ns < this
    answered: OrderedDict[str, None] = field(default_factory=OrderedDict)  # message ids
    closed: OrderedDict[str, None] = field(default_factory=OrderedDict)

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
        """The feed's clock moved (an event time from md.quotes or md.trades)."""
        if event_ns <= self.clock_ns:
            return []
        self.clock_ns = event_ns
        return self._clock_moved()

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
        working = Working(order, event_id, acknowledged=False, filled_qty=order.filled_qty)
        self.orders[key] = working
        if order.status == OrderStatus.ACCEPTED and self._open_ns() is None:
            return []  # held until the clock enters the regular session
        working.acknowledged = True
        # issue 5: a marketable order meets the venues' quotes here.
        return [self._answer("acknowledged", event_id, msg["at"], order)]

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
        self.orders[str(new.id)] = Working(new, event_id, acknowledged=True)
        return [self._answer("replaced", event_id, msg["at"], old.order, replaced_by=str(new.id))]

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

    def _clock_moved(self) -> list[Answer]:
        # issue 5: day orders expire at the close, opg/cls take part in the auctions, and
        # resting orders wake here. Now: held orders are released at the open.
        if not any(w.held for w in self.orders.values()):
            return []
        open_ns = self._open_ns()
        if open_ns is None:
            return []
        answers = []
        for w in self.orders.values():
            if w.held:
                w.acknowledged = True
                answers.append(self._answer("acknowledged", w.event_id, open_ns, w.order))
        return answers

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


def _decimal(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _why(exc: Exception) -> str:
    if isinstance(exc, InvalidOperation):  # its text is a list of signal classes
        return "a field is not a decimal number"
    return f"{type(exc).__name__}: {exc}"
