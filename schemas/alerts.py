"""Price alerts: their terms, and how a symbol's alerts are evaluated. Pure: no I/O.

Terms (`check_terms` refuses a breach with an `AlertRefused` code, HTTP 422):
- type `price_above` / `price_below` with `price` (> 0, at most 4 places, at most
  1,000,000), or `percent_change` with `percent` (> 0, at most 4 places, at most 1,000;
  under 100 when the direction is down) and `direction` `up`, `down` or `either`
  (default either); a price for a percent alert, or a percent or direction for a price
  alert, is refused.
- `source`: which price is watched. `trade` (default): the last sale, i.e. trade prints
  whose sale conditions may set the last price (`updates_last`: no odd lots,
  extended-hours, out-of-sequence or other ineligible prints; the rule candles' close
  and stop triggers use). `mid`: the NBBO midpoint ((bid + ask) / 2, half-even to 4
  places) when both sides are quoted. The evaluator consolidates the NBBO itself from
  the venues' quotes (schemas/nbbo.py, as the normalize flow does), so it sees every
  change of the book: md.quotes carries only the last NBBO of each normalize batch.
- one-shot (`recurring` false: fires once, then the alert is `triggered`), or
  `recurring` with `cooldown_s` (1 s to 30 days, default 300): fires again on a later
  crossing, never less than the cool-down after its last firing, in feed time.

Evaluation (`SymbolAlerts`, one per symbol, fed in each source's order):
- A crossing is a move of the watched price from one side of the level to the other:
  above: previous < level <= price; below: previous > level >= price. The previous
  price is the symbol's last price of that source, whenever it was seen (so a price
  already beyond the level when the alert arrives does not fire: it has to come back
  and cross). Percent alerts cross previous_close × (1 ± percent / 100).
- The cool-down suppresses a crossing rather than postponing it: after it, only a new
  crossing fires. A feed clock that goes back (an older session replayed) is within
  the cool-down until it passes the last firing again.
- Previous close: the last eligible trade inside the regular session (09:30 to the
  close, NYSE calendar) of the New York trading day before the event's New York date.
  The evaluator tracks each day's last such trade itself; for a day it has not seen,
  it uses the close the API seeded at creation (`reference_close` of
  `reference_day`). Without either, a percent alert waits.
- Each firing's id is derived from the alert, its version and the market event that
  crossed (venue + trade id + time for a trade, the NBBO's version for a quote), so
  evaluating the same event again yields the same id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

from schemas.marketdata import Quote
from schemas.nbbo import NbboBook
from schemas.sessions import NEW_YORK, previous_session, regular_hours

AlertType = Literal["price_above", "price_below", "percent_change"]
Direction = Literal["up", "down", "either"]
Source = Literal["trade", "mid"]
TYPES: tuple[str, ...] = ("price_above", "price_below", "percent_change")
DIRECTIONS: tuple[str, ...] = ("up", "down", "either")
SOURCES: tuple[str, ...] = ("trade", "mid")
STATUSES: tuple[str, ...] = ("active", "triggered", "canceled")

PRICE = Decimal("0.0001")
PERCENT = Decimal("0.0001")
MAX_PRICE = Decimal(1_000_000)
MAX_PERCENT = Decimal(1_000)
MIN_COOLDOWN_S = 1
MAX_COOLDOWN_S = 30 * 86_400
DEFAULT_COOLDOWN_S = 300
MAX_NOTE = 200
NBBO = "NBBO"
# Firing ids: uuid5 in this namespace of "<alert id>|<version>|<event key>".
FIRE_NAMESPACE = uuid.UUID("5d0c7f0e-4a43-4f57-9a0c-2f1f3c6a7a11")
_KEEP_CLOSES = 10  # days of closes a symbol remembers
_HOUR_NS = 3_600_000_000_000


class AlertRefused(Exception):
    """A rule of alert terms the request breaks: HTTP 422 with a stable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True, slots=True)
class AlertTerms:
    """What an alert watches and how often it may fire."""

    type: str
    price: Decimal | None = None
    percent: Decimal | None = None
    direction: str | None = None
    source: str = "trade"
    recurring: bool = False
    cooldown_s: int | None = None
    note: str | None = None


def _places_ok(value: Decimal, places: Decimal) -> bool:
    try:
        return value == value.quantize(places)
    except InvalidOperation:
        return False


def check_terms(terms: AlertTerms) -> AlertTerms:
    """The terms normalized (prices to 4 places, defaults filled), or AlertRefused."""
    if terms.type not in TYPES:
        raise AlertRefused("invalid_type", f"type must be one of {', '.join(TYPES)}")
    if terms.source not in SOURCES:
        raise AlertRefused("invalid_source", "source must be trade (last sale) or mid (NBBO)")
    price, percent, direction = terms.price, terms.percent, terms.direction
    if terms.type == "percent_change":
        if price is not None:
            raise AlertRefused(
                "unexpected_price", "a percent_change alert takes percent, not price"
            )
        if percent is None:
            raise AlertRefused("missing_percent", "a percent_change alert needs percent")
        direction = direction or "either"
        if direction not in DIRECTIONS:
            raise AlertRefused("invalid_direction", "direction must be up, down or either")
        if not (0 < percent <= MAX_PERCENT) or not _places_ok(percent, PERCENT):
            raise AlertRefused(
                "invalid_percent", f"percent must be above 0, at most {MAX_PERCENT}, 4 places"
            )
        if direction == "down" and percent >= 100:
            raise AlertRefused("invalid_percent", "a price cannot fall by 100 % or more")
        percent = percent.quantize(PERCENT)
    else:
        if percent is not None:
            raise AlertRefused("unexpected_percent", f"a {terms.type} alert takes price only")
        if direction is not None:
            raise AlertRefused("unexpected_direction", "direction is for percent_change alerts")
        if price is None:
            raise AlertRefused("missing_price", f"a {terms.type} alert needs price")
        if not (0 < price <= MAX_PRICE) or not _places_ok(price, PRICE):
            raise AlertRefused(
                "invalid_price", f"price must be above 0, at most {MAX_PRICE}, 4 places"
            )
        price = price.quantize(PRICE)
    cooldown = terms.cooldown_s
    if not terms.recurring:
        if cooldown is not None:
            raise AlertRefused("unexpected_cooldown", "cooldown_s is for recurring alerts")
    else:
        cooldown = DEFAULT_COOLDOWN_S if cooldown is None else cooldown
        if isinstance(cooldown, bool) or not MIN_COOLDOWN_S <= cooldown <= MAX_COOLDOWN_S:
            raise AlertRefused(
                "invalid_cooldown",
                f"cooldown_s must be {MIN_COOLDOWN_S} to {MAX_COOLDOWN_S} seconds",
            )
    if terms.note is not None and len(terms.note) > MAX_NOTE:
        raise AlertRefused("invalid_note", f"note is at most {MAX_NOTE} characters")
    return replace(terms, price=price, percent=percent, direction=direction, cooldown_s=cooldown)


def patched(current: AlertTerms, changes: dict[str, Any]) -> AlertTerms:
    """`current` with the given fields replaced (type is fixed), checked again. Turning
    `recurring` off drops the cool-down; turning it on without one takes the default."""
    unknown = set(changes) - {
        "price",
        "percent",
        "direction",
        "source",
        "recurring",
        "cooldown_s",
        "note",
    }
    if unknown:
        raise AlertRefused("invalid_parameter", f"cannot change {', '.join(sorted(unknown))}")
    nulled = sorted(k for k in ("recurring", "source") if k in changes and changes[k] is None)
    if nulled:
        raise AlertRefused("invalid_parameter", f"{', '.join(nulled)} cannot be null")
    merged = replace(current, **changes)
    if "recurring" in changes and not merged.recurring and "cooldown_s" not in changes:
        merged = replace(merged, cooldown_s=None)
    return check_terms(merged)


# ---------------------------------------------------------------------- the definition


@dataclass(frozen=True, slots=True)
class AlertDef:
    """An alert as the flow knows it (the alerts topic carries one per change)."""

    id: str
    account_id: str
    symbol: str
    version: int
    status: str
    terms: AlertTerms
    reference_close: Decimal | None = None
    reference_day: date | None = None

    def to_json(self) -> dict[str, Any]:
        t = self.terms

        def dec(d: Decimal | None) -> str | None:
            return None if d is None else str(d)

        return {
            "id": self.id,
            "account_id": self.account_id,
            "symbol": self.symbol,
            "version": self.version,
            "status": self.status,
            "type": t.type,
            "price": dec(t.price),
            "percent": dec(t.percent),
            "direction": t.direction,
            "source": t.source,
            "recurring": t.recurring,
            "cooldown_s": t.cooldown_s,
            "reference_close": dec(self.reference_close),
            "reference_day": None if self.reference_day is None else self.reference_day.isoformat(),
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> AlertDef:
        def dec(v: Any) -> Decimal | None:
            return None if v is None else Decimal(str(v))

        return AlertDef(
            id=str(d["id"]),
            account_id=str(d["account_id"]),
            symbol=str(d["symbol"]),
            version=int(d["version"]),
            status=str(d["status"]),
            terms=AlertTerms(
                type=str(d["type"]),
                price=dec(d.get("price")),
                percent=dec(d.get("percent")),
                direction=d.get("direction"),
                source=str(d.get("source", "trade")),
                recurring=bool(d.get("recurring", False)),
                cooldown_s=d.get("cooldown_s"),
            ),
            reference_close=dec(d.get("reference_close")),
            reference_day=(
                date.fromisoformat(d["reference_day"]) if d.get("reference_day") else None
            ),
        )


@dataclass(frozen=True, slots=True)
class Firing:
    """One crossing that fires an alert."""

    id: str
    alert_id: str
    account_id: str
    version: int
    symbol: str
    event_ns: int
    crossed: Literal["above", "below"]
    price: Decimal  # the watched price that crossed
    level: Decimal  # the level it crossed
    source: str
    previous_close: Decimal | None = None  # percent alerts
    change_percent: Decimal | None = None  # percent alerts: price against previous_close
    venue: str | None = None  # trade source: the print's venue and id
    trade_id: str | None = None
    one_shot: bool = True
    cooldown_s: int | None = None


def fire_id(alert_id: str, version: int, event_key: str) -> str:
    return str(uuid.uuid5(FIRE_NAMESPACE, f"{alert_id}|{version}|{event_key}"))


def crossing(previous: Decimal | None, price: Decimal, level: Decimal, up: bool) -> bool:
    """previous < level <= price (up) or previous > level >= price (down)."""
    if previous is None:
        return False
    return previous < level <= price if up else previous > level >= price


def cooled(last_fired_ns: int | None, event_ns: int, cooldown_s: int | None) -> bool:
    """May a recurring alert fire at event_ns? (Feed time; a clock that went back waits.)"""
    if last_fired_ns is None:
        return True
    return event_ns - last_fired_ns >= (cooldown_s or 0) * 1_000_000_000


def percent_levels(close: Decimal, percent: Decimal, direction: str) -> list[tuple[Decimal, bool]]:
    """(level, crossing up?) pairs of a percent alert on a previous close."""
    out = []
    if direction in ("up", "either"):
        out.append((close * (100 + percent) / 100, True))
    if direction in ("down", "either"):
        out.append((close * (100 - percent) / 100, False))
    return out


def change_percent(price: Decimal, close: Decimal) -> Decimal:
    return ((price - close) * 100 / close).quantize(PERCENT, ROUND_HALF_EVEN)


def midpoint(bid: Decimal, ask: Decimal) -> Decimal | None:
    if bid <= 0 or ask <= 0:
        return None
    return ((bid + ask) / 2).quantize(PRICE, ROUND_HALF_EVEN)


@cache
def _day_of_hour(hour: int) -> date:
    # New York's offset changes only on the hour, so a UTC hour has one New York date.
    return datetime.fromtimestamp(hour * 3600, UTC).astimezone(ZoneInfo(NEW_YORK)).date()


def ny_day(event_ns: int) -> date:
    return _day_of_hour(event_ns // _HOUR_NS)


@cache
def _regular_ns(day: date) -> tuple[int, int] | None:
    hours = regular_hours(day)
    if hours is None:
        return None
    return int(hours[0].timestamp()) * 10**9, int(hours[1].timestamp()) * 10**9


@cache
def _previous(day: date) -> date:
    return previous_session(day)


def in_regular_session(event_ns: int) -> date | None:
    """The New York date of event_ns when it falls in that day's regular session."""
    day = ny_day(event_ns)
    bounds = _regular_ns(day)
    return day if bounds is not None and bounds[0] <= event_ns < bounds[1] else None


# ---------------------------------------------------------------------- evaluation


@dataclass(slots=True)
class _Held:
    alert: AlertDef
    last_fired_ns: int | None = None


@dataclass(slots=True)
class SymbolAlerts:
    """One symbol's active alerts, its last price per source and its daily closes."""

    symbol: str
    alerts: dict[str, _Held] = field(default_factory=dict)
    last: dict[str, Decimal] = field(default_factory=dict)  # source -> last price
    session: tuple[date, int, Decimal] | None = None  # newest regular trade: day, ns, price
    closes: dict[date, Decimal] = field(default_factory=dict)  # finished days
    book: NbboBook = field(default_factory=NbboBook)  # the venues' quotes: the NBBO

    # ------------------------------------------------------------ definitions

    def define(self, alert: AlertDef) -> None:
        """A create, change or cancel; an older version than the one held changes nothing."""
        held = self.alerts.get(alert.id)
        if held is not None and held.alert.version >= alert.version:
            return
        if alert.status != "active":
            self.alerts.pop(alert.id, None)
            return
        self.alerts[alert.id] = _Held(alert, held.last_fired_ns if held else None)

    # ------------------------------------------------------------ market events

    def on_trade(
        self,
        price: Decimal,
        event_ns: int,
        venue: str,
        trade_id: str,
        updates_last: bool = True,
    ) -> list[Firing]:
        if not updates_last:
            return []
        day = in_regular_session(event_ns)
        if day is not None:
            self._track_close(day, event_ns, price)
        key = f"t|{venue}|{trade_id}|{event_ns}"
        return self._observe("trade", price, event_ns, key, venue, trade_id)

    def on_quote(self, quote: Quote) -> list[Firing]:
        """A venue's quote: the NBBO it makes, if it changed, is the mid source's price."""
        if quote.venue == NBBO:
            return []
        nbbo = self.book.update(quote)
        if nbbo is None:
            return []
        return self.on_nbbo(nbbo.bid_price, nbbo.ask_price, nbbo.event_ns, nbbo.seq)

    def on_nbbo(self, bid: Decimal, ask: Decimal, event_ns: int, seq: int = 0) -> list[Firing]:
        mid = midpoint(bid, ask)
        if mid is None:
            return []
        return self._observe("mid", mid, event_ns, f"q|{event_ns}|{seq}", None, None)

    def previous_close(self, day: date, alert: AlertDef | None = None) -> Decimal | None:
        """The close of the trading day before `day`: tracked, else the alert's seed."""
        before = _previous(day)
        if self.session is not None and self.session[0] == before:
            return self.session[2]
        if before in self.closes:
            return self.closes[before]
        if alert is not None and alert.reference_day == before:
            return alert.reference_close
        return None

    def _track_close(self, day: date, event_ns: int, price: Decimal) -> None:
        held = self.session
        if held is None or day > held[0]:
            if held is not None:
                self.closes[held[0]] = held[2]
                for old in sorted(self.closes)[:-_KEEP_CLOSES]:
                    del self.closes[old]
            self.session = (day, event_ns, price)
        elif day == held[0] and event_ns >= held[1]:
            self.session = (day, event_ns, price)

    def _observe(
        self,
        source: str,
        price: Decimal,
        event_ns: int,
        key: str,
        venue: str | None,
        trade_id: str | None,
    ) -> list[Firing]:
        previous = self.last.get(source)
        self.last[source] = price
        if previous is None or not self.alerts:
            return []
        fired: list[Firing] = []
        day: date | None = None
        for alert_id, held in list(self.alerts.items()):
            alert = held.alert
            terms = alert.terms
            if terms.source != source:
                continue
            close: Decimal | None = None
            if terms.type == "percent_change":
                day = day or ny_day(event_ns)
                close = self.previous_close(day, alert)
                if close is None or close <= 0:
                    continue
                assert terms.percent is not None and terms.direction is not None
                levels = percent_levels(close, terms.percent, terms.direction)
            else:
                assert terms.price is not None
                levels = [(terms.price, terms.type == "price_above")]
            hit = next((lv for lv in levels if crossing(previous, price, *lv)), None)
            if hit is None:
                continue
            if terms.recurring and not cooled(held.last_fired_ns, event_ns, terms.cooldown_s):
                continue
            held.last_fired_ns = event_ns
            fired.append(
                Firing(
                    id=fire_id(alert.id, alert.version, key),
                    alert_id=alert.id,
                    account_id=alert.account_id,
                    version=alert.version,
                    symbol=self.symbol,
                    event_ns=event_ns,
                    crossed="above" if hit[1] else "below",
                    price=price,
                    level=hit[0],
                    source=source,
                    previous_close=close,
                    change_percent=None if close is None else change_percent(price, close),
                    venue=venue,
                    trade_id=trade_id,
                    one_shot=not terms.recurring,
                    cooldown_s=terms.cooldown_s,
                )
            )
            if not terms.recurring:
                del self.alerts[alert_id]  # fired once: done
        return fired
