"""A realistic, deterministic trading session, as normalized events and as recordings.

``simulate_session`` is pure: the same arguments always give the same events.
It models one common mid price per symbol (a random walk in 0.0001 units, so
no float ever touches a price) that two venues quote around independently:

- "iex": IEX TOPS; the recording starts with System Events (O, S, and R when
  the session starts at or after 09:30), the Security Directory and an initial
  trading Status per symbol; R at 09:30 and M at 16:00 when inside the window,
  E and C at the end when the window reaches 16:00.
- "nasdaq": the JSON-lines vendor feed (quotes, trades, breaks, status only).

Realism: penny ticks above $1 and 0.0001 below; spreads of 1-3 ticks; sizes in
round lots with some odd ones; trades at the bid, the ask or in between (IEX also
prints at the exact midpoint, half a penny, like its midpoint peg); odd lots
flagged "I", extended-hours prints "T", a few intermarket sweeps "F"; a burst
of activity right after the 09:30 open; one symbol halted for a few minutes
(Status halted then trading on both venues, nothing for it in between); a few
breaks of earlier trades. Event times are strictly increasing per venue, in UTC
ns, for a New York session (so 09:30 is 14:30 UTC in November, 13:30 in July).

Every event's receive_ns equals its event_ns: when read back, the parser stamps
its own receive time, so tests compare with receive_ns ignored.

``write_session`` writes ``iex.tops`` and ``nasdaq.jsonl`` plus ``expected.json``
(good-event counts per kind and injected malformed messages per venue), since
malformed input is written raw and cannot be told apart afterwards otherwise.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from infra.recording import RecordingWriter
from schemas import iex_tops, json_feed
from schemas.marketdata import (
    Event,
    Quote,
    Security,
    Status,
    SystemEvent,
    Trade,
    TradeBreak,
)
from schemas.sale_conditions import eligibility

NEW_YORK = ZoneInfo("America/New_York")
VENUES = ("iex", "nasdaq")
EXPECTED_FILE = "expected.json"
RECORDING_NAMES = {"iex": "iex.tops", "nasdaq": "nasdaq.jsonl"}

REGULAR_OPEN = dt.time(9, 30)
REGULAR_CLOSE = dt.time(16, 0)
EXTENDED_OPEN = dt.time(4, 0)
EXTENDED_CLOSE = dt.time(20, 0)

NS = 1_000_000_000
UNIT = Decimal("0.0001")  # prices are simulated as ints of this unit
PENNY = 100  # $0.01 in units
DOLLAR = 10_000

# Messages per second per symbol, both venues together, in regular hours at
# weight 1. With 20 symbols and 30 minutes this gives ~20k messages a venue.
BASE_RATE = 2.0
EXTENDED_RATE_FACTOR = 0.05  # pre/post-market is thin
OPEN_BURST = 8.0  # extra multiple of the rate at 09:30:00 ...
OPEN_BURST_DECAY_S = 15.0  # ... decaying with this time constant (mostly gone in a minute)
TRADE_SHARE = 0.25  # of simulated messages, the rest are quote updates
VOLATILITY = 1.5e-4  # of price per sqrt(second): about 2 % a day
IEX_SHARE = 0.45  # of messages that are IEX's

# Real-looking tickers with a rough price level; order sets activity (busiest first).
TICKERS: tuple[tuple[str, str], ...] = (
    ("AAPL", "189.50"),
    ("NVDA", "141.20"),
    ("TSLA", "338.60"),
    ("MSFT", "421.30"),
    ("AMZN", "201.80"),
    ("META", "562.10"),
    ("GOOGL", "168.40"),
    ("AMD", "137.90"),
    ("JPM", "242.70"),
    ("V", "309.90"),
    ("PLTR", "61.30"),
    ("BAC", "46.80"),
    ("NFLX", "896.40"),
    ("XOM", "121.40"),
    ("SIRI", "2.35"),
    ("FFIE", "0.4520"),  # sub-dollar: quoted in 0.0001 ticks
    ("INTC", "24.10"),
    ("F", "10.90"),
    ("WMT", "88.90"),
    ("KO", "63.70"),
    ("UNH", "591.20"),
    ("JNJ", "155.30"),
    ("PG", "171.20"),
    ("MA", "522.80"),
    ("HD", "418.60"),
    ("DIS", "114.50"),
    ("CSCO", "58.90"),
    ("PFE", "25.90"),
    ("T", "22.70"),
    ("SOFI", "14.60"),
    ("NIO", "4.30"),
    ("COST", "915.20"),
    ("BRK.B", "472.10"),
    ("CRM", "331.40"),
    ("ORCL", "186.70"),
    ("ADBE", "512.30"),
    ("QCOM", "158.20"),
    ("UBER", "70.40"),
    ("SHOP", "108.90"),
    ("COIN", "298.50"),
)

HALT_REASON = {"iex": "T1", "nasdaq": "Trading halt"}  # TOPS reasons are 4 chars at most
RESUME_REASON = {"iex": "", "nasdaq": "Trading resumed"}


# ---------------------------------------------------------------- universe


def universe(count: int) -> list[tuple[str, int]]:
    """The first ``count`` symbols with a reference price in units (seed independent)."""
    if count < 1:
        raise ValueError("need at least one symbol")
    chosen = [(sym, int(Decimal(price) / UNIT)) for sym, price in TICKERS[:count]]
    taken = {sym for sym, _ in chosen}
    # A fixed generator so that symbol N is the same name for every seed.
    gen = random.Random("tapeflow-symbols")
    while len(chosen) < count:
        sym = "".join(gen.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ", k=gen.choice((3, 4, 4))))
        if sym in taken:
            continue
        taken.add(sym)
        dollars = math.exp(gen.uniform(math.log(3), math.log(250)))
        chosen.append((sym, round(dollars * 100) * PENNY))
    return chosen


def to_price(units: int) -> Decimal:
    return Decimal(units).scaleb(-4)


def _tick(units: int) -> int:
    return PENNY if units >= DOLLAR else 1


# ---------------------------------------------------------------- session clock


@dataclass(frozen=True)
class Window:
    start_ns: int
    end_ns: int
    open_ns: int  # 09:30 New York of the session date
    close_ns: int  # 16:00

    def regular(self, t: int) -> bool:
        return self.open_ns <= t < self.close_ns


def _ny_ns(date: dt.date, at: dt.time) -> int:
    local = dt.datetime.combine(date, at, tzinfo=NEW_YORK)
    delta = local - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return delta // dt.timedelta(microseconds=1) * 1000  # exact: no float


def session_window(date: dt.date, start: str, minutes: int | None) -> Window:
    begin = dt.time.fromisoformat(start)
    if not EXTENDED_OPEN <= begin < EXTENDED_CLOSE:
        raise ValueError(f"start {start} is outside the 04:00-20:00 extended session")
    start_ns = _ny_ns(date, begin)
    last_ns = _ny_ns(date, EXTENDED_CLOSE)
    close_ns = _ny_ns(date, REGULAR_CLOSE)
    if minutes is None:
        end_ns = close_ns if start_ns < close_ns else last_ns
    else:
        if minutes < 1:
            raise ValueError("minutes must be at least 1")
        end_ns = min(start_ns + minutes * 60 * NS, last_ns)
    return Window(start_ns, end_ns, _ny_ns(date, REGULAR_OPEN), close_ns)


# ---------------------------------------------------------------- per venue tapes

_E = TypeVar("_E", bound=Event)


@dataclass
class _Tape:
    """One venue's events; hands out unique ns so times end up strictly increasing."""

    venue: str
    events: list[Event] = field(default_factory=list)
    used: set[int] = field(default_factory=set)

    def slot(self, t: int) -> int:
        while t in self.used:
            t += 1
        self.used.add(t)
        return t

    def add(self, event: _E, t: int) -> _E:
        """Append ``event`` timed at the first free ns from ``t`` (received when sent)."""
        ns = self.slot(t)
        timed = replace(event, event_ns=ns, receive_ns=ns)
        self.events.append(timed)
        return timed

    def sorted(self) -> list[Event]:
        return sorted(self.events, key=lambda e: e.event_ns)


@dataclass
class _Book:
    symbol: str
    mid: int  # units
    last_ns: int
    weight: float
    quotes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Halt:
    symbol: str
    start_ns: int
    end_ns: int


# ---------------------------------------------------------------- the generator


class _Session:
    def __init__(self, date: dt.date, symbols: int, seed: int, minutes: int | None, start: str):
        self.rng = random.Random(f"tapeflow-simulate:{seed}")  # str seeds hash stably (sha512)
        self.window = session_window(date, start, minutes)
        self.tapes = {venue: _Tape(venue) for venue in VENUES}
        self.books = [
            _Book(sym, self._jitter(units), self.window.start_ns, 1.0 / (1.0 + 0.12 * i))
            for i, (sym, units) in enumerate(universe(symbols))
        ]
        self.reference = {book.symbol: book.mid for book in self.books}
        self.cum_weights = list(_accumulate(b.weight for b in self.books))
        self.trade_ids = {venue: self.rng.randrange(10**6, 10**7) for venue in VENUES}
        self.trades: dict[str, list[Trade]] = {venue: [] for venue in VENUES}
        self.halt = self._plan_halt()

    def _jitter(self, units: int) -> int:
        price = units * (1.0 + self.rng.uniform(-0.02, 0.02))
        tick = _tick(units)
        return max(tick, round(price / tick) * tick)

    def _plan_halt(self) -> _Halt:
        w = self.window
        lo, hi = max(w.start_ns, w.open_ns), min(w.end_ns, w.close_ns)
        if hi - lo < 10 * 60 * NS:  # halts are a regular-hours affair, when there are enough
            lo, hi = w.start_ns, w.end_ns
        length = hi - lo
        # A few minutes, but at most a fifth of a short session.
        duration = min(self.rng.randint(180, 300) * NS, length // 5)
        start = lo + int(length * self.rng.uniform(0.35, 0.55))
        book = self.rng.choice(self.books)
        return _Halt(book.symbol, start, start + duration)

    # -- scheduled (non-random) events

    def preamble(self) -> int:
        """IEX start-of-day messages at the session start; returns the next free time."""
        iex = self.tapes["iex"]
        t = self.window.start_ns
        in_regular = self.window.regular(t)
        codes = "OSR" if in_regular else "OS"  # R is scheduled at 09:30 when that comes later
        for code in codes:
            iex.add(SystemEvent("iex", code, 0, 0), t)
            t += 1_000
        for book in self.books:
            poc = to_price(self.reference[book.symbol])
            iex.add(Security(book.symbol, "iex", 100, False, 0, 0, poc), t)
            t += 1_000
        for book in self.books:
            iex.add(Status(book.symbol, "iex", "trading", "", 0, 0), t)
            t += 1_000
        return t

    def scheduled_system_events(self) -> None:
        w, iex = self.window, self.tapes["iex"]
        if w.start_ns < w.open_ns <= w.end_ns:
            iex.add(SystemEvent("iex", "R", 0, 0), w.open_ns)
        if w.start_ns < w.close_ns <= w.end_ns:
            iex.add(SystemEvent("iex", "M", 0, 0), w.close_ns)
        if w.end_ns >= w.close_ns:
            iex.add(SystemEvent("iex", "E", 0, 0), w.end_ns + 1_000)
            iex.add(SystemEvent("iex", "C", 0, 0), w.end_ns + 2_000)

    def halt_statuses(self) -> None:
        h = self.halt
        for venue, tape in self.tapes.items():
            # Each venue disseminates the halt a little differently late.
            lag = self.rng.randint(20_000, 2_000_000)
            tape.add(Status(h.symbol, venue, "halted", HALT_REASON[venue], 0, 0), h.start_ns + lag)
            tape.add(Status(h.symbol, venue, "trading", RESUME_REASON[venue], 0, 0), h.end_ns + lag)

    # -- the random process

    def rate(self, t: int) -> float:
        w = self.window
        total = BASE_RATE * self.cum_weights[-1]
        if not w.regular(t):
            return total * EXTENDED_RATE_FACTOR
        since_open = (t - w.open_ns) / NS
        return total * (1.0 + OPEN_BURST * math.exp(-since_open / OPEN_BURST_DECAY_S))

    def halted(self, symbol: str, t: int) -> bool:
        # Quiet from just before the halt until every venue has resumed (lags <= 2 ms);
        # the margins cover the few µs a trade may land after its triggering quote.
        h = self.halt
        return symbol == h.symbol and h.start_ns - 100_000 <= t < h.end_ns + 3_000_000

    def run(self, t: int) -> None:
        rng, end = self.rng, self.window.end_ns
        while True:
            t += max(1, int(rng.expovariate(self.rate(t)) * NS))
            if t >= end:
                return
            book = rng.choices(self.books, cum_weights=self.cum_weights)[0]
            if self.halted(book.symbol, t):
                continue
            self._walk(book, t)
            venue = "iex" if rng.random() < IEX_SHARE else "nasdaq"
            if rng.random() < TRADE_SHARE:
                self._trade(book, venue, t)
            else:
                self._quote(book, venue, t)

    def _walk(self, book: _Book, t: int) -> None:
        elapsed = max(t - book.last_ns, 1) / NS
        step = self.rng.gauss(0.0, VOLATILITY * book.mid * math.sqrt(elapsed))
        book.mid = max(_tick(book.mid), book.mid + round(step))
        book.last_ns = t

    def _quote(self, book: _Book, venue: str, t: int) -> None:
        rng = self.rng
        tick = _tick(book.mid)
        spread = rng.choice((1, 1, 1, 2, 2, 3)) * tick
        # Each venue rounds and skews on its own, so venues show different prices.
        bid = (book.mid - spread // 2) // tick * tick + rng.choice((-1, 0, 0, 0, 1)) * tick
        bid = max(tick, bid)
        ask = bid + spread
        if ask >= DOLLAR and ask % PENNY:
            ask += PENNY - ask % PENNY  # crossing $1 moves the ask onto the penny grid
        bid_size, ask_size = _lot(rng), _lot(rng)
        book.quotes[venue] = (bid, bid_size, ask, ask_size)
        quote = Quote(book.symbol, venue, to_price(bid), bid_size, to_price(ask), ask_size, 0, 0)
        self.tapes[venue].add(quote, t)

    def _trade(self, book: _Book, venue: str, t: int) -> None:
        if venue not in book.quotes:
            self._quote(book, venue, t)  # a venue prints only against its own quote
            t += self.rng.randint(1_000, 50_000)
        bid, _, ask, _ = book.quotes[venue]
        price = self._trade_price(bid, ask, venue)
        size = _trade_size(self.rng)
        conditions = self._conditions(venue, size, t)
        self.trade_ids[venue] += self.rng.randint(1, 40)
        trade_id = str(self.trade_ids[venue])
        last, volume = eligibility(conditions)
        trade = Trade(book.symbol, venue, trade_id, to_price(price), size, conditions, 0, 0)
        trade = replace(trade, updates_last=last, updates_volume=volume)
        self.trades[venue].append(self.tapes[venue].add(trade, t))

    def _trade_price(self, bid: int, ask: int, venue: str) -> int:
        roll = self.rng.random()
        if roll < 0.4:
            return bid
        if roll < 0.8:
            return ask
        if venue == "iex" and roll < 0.9:
            return (bid + ask) // 2  # midpoint peg: half a penny on a one-tick spread
        tick = _tick(bid)
        steps = (ask - bid) // tick
        return bid + self.rng.randint(0, steps) * tick

    def _conditions(self, venue: str, size: int, t: int) -> tuple[str, ...]:
        codes = []
        if self.rng.random() < 0.03:
            codes.append("F")  # intermarket sweep
        if not self.window.regular(t):
            codes.append("T")
        if size < 100:
            codes.append("I")  # odd lot; a mixed lot (e.g. 150) is a regular print
        if venue == "iex":
            # TOPS flags come back in bit order (F T I) and "@" only when none is set.
            return tuple(codes) or ("@",)
        return ("@", *codes)  # the JSON vendor always leads with the regular-sale code

    def breaks(self) -> None:
        """Break a few earlier trades per venue, some seconds to minutes later."""
        for venue, trades in self.trades.items():
            eligible = [tr for tr in trades if tr.event_ns + 5 * NS < self.window.end_ns]
            count = min(len(eligible), self.rng.randint(2, 4))
            for trade in self.rng.sample(eligible, count):
                delay = self.rng.randint(2 * NS, 120 * NS)
                later = min(trade.event_ns + delay, self.window.end_ns - 1)
                cancel = TradeBreak(
                    trade.symbol, venue, trade.trade_id, trade.price, trade.size, 0, 0
                )
                self.tapes[venue].add(cancel, later)


def _accumulate(values: Iterator[float]) -> Iterator[float]:
    total = 0.0
    for value in values:
        total += value
        yield total


def _lot(rng: random.Random) -> int:
    """A displayed size: round lots, sometimes with an odd remainder."""
    size = 100 * rng.choice((1, 1, 2, 2, 3, 4, 5, 8, 10, 15, 20))
    if rng.random() < 0.1:
        size += rng.randint(1, 99)
    return size


def _trade_size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.18:
        return rng.randint(1, 99)  # odd lot
    if roll < 0.2:
        return rng.choice((1000, 2000, 5000, 10_000))  # a block
    size = 100 * rng.choice((1, 1, 1, 1, 2, 2, 3, 5))
    if roll > 0.97:
        size += rng.randint(1, 99)  # mixed lot
    return size


def simulate_session(
    *,
    date: dt.date,
    symbols: int,
    seed: int,
    minutes: int | None = None,
    start: str = "09:30",
) -> dict[str, list[Event]]:
    """The normalized events of a simulated session, per venue, in time order."""
    session = _Session(date, symbols, seed, minutes, start)
    first_free = session.preamble()
    session.scheduled_system_events()
    session.halt_statuses()
    session.run(first_free)
    session.breaks()
    out = {venue: tape.sorted() for venue, tape in session.tapes.items()}
    for venue, events in out.items():
        times = [e.event_ns for e in events]
        assert all(a < b for a, b in itertools.pairwise(times)), venue
    return out


# ---------------------------------------------------------------- recordings


def write_session(
    out_dir: Path,
    *,
    date: dt.date,
    symbols: int,
    seed: int,
    minutes: int | None = None,
    start: str = "09:30",
    malformed_rate: float = 0.0,
) -> dict[str, Path]:
    """Write iex.tops and nasdaq.jsonl (and expected.json) for a simulated session.

    Before each good message, with probability ``malformed_rate``, one malformed
    raw message is written (each parses to exactly one Malformed).
    """
    if not 0.0 <= malformed_rate <= 1.0:
        raise ValueError("malformed_rate must be within [0, 1]")
    events = simulate_session(date=date, symbols=symbols, seed=seed, minutes=minutes, start=start)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A separate stream, so the recording's framing never changes the simulated events.
    rng = random.Random(f"tapeflow-write:{seed}")
    paths = {venue: out_dir / name for venue, name in RECORDING_NAMES.items()}
    malformed = {
        "iex": _write_tops(paths["iex"], events["iex"], rng, malformed_rate),
        "nasdaq": _write_json(paths["nasdaq"], events["nasdaq"], rng, malformed_rate),
    }
    expected = expected_counts(events, malformed)
    expected["generated_by"] = {
        "date": date.isoformat(),
        "symbols": symbols,
        "seed": seed,
        "minutes": minutes,
        "start": start,
        "malformed_rate": malformed_rate,
    }
    (out_dir / EXPECTED_FILE).write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    return paths


def expected_counts(events: dict[str, list[Event]], malformed: dict[str, int]) -> dict[str, Any]:
    """Per venue: good events per kind, and malformed messages injected."""
    out: dict[str, Any] = {}
    for venue, venue_events in events.items():
        counts: dict[str, int] = dict(sorted(Counter(e.kind for e in venue_events).items()))
        counts["malformed"] = malformed.get(venue, 0)
        out[venue] = counts
    return out


def read_expected(out_dir: Path) -> dict[str, Any]:
    return json.loads((out_dir / EXPECTED_FILE).read_text())


def _write_json(path: Path, events: Sequence[Event], rng: random.Random, rate: float) -> int:
    bad = 0
    with RecordingWriter(path) as writer:
        for event in events:
            if rate and rng.random() < rate:
                writer.write(_bad_json_line(event, rng))
                bad += 1
            writer.write(json_feed.encode_event(event))
    return bad


def _bad_json_line(event: Event, rng: random.Random) -> bytes:
    """A line that parses to exactly one Malformed, derived from a real message."""
    obj = json_feed.to_object(event)
    prices = [k for k in ("bp", "ap", "p") if k in obj]
    kinds = ["truncated", "missing", "type"] + (["negative"] if prices else [])
    kind = rng.choice(kinds)
    if kind == "truncated":
        line = json_feed.encode_event(event)
        return line[: rng.randint(1, len(line) - 1)]  # any proper prefix of an object is invalid
    if kind == "missing":
        del obj[rng.choice([k for k in obj if k not in ("bx", "ax", "x", "c", "sm")])]
    elif kind == "type":
        obj["T"] = rng.choice(("Z", "b", "trade", "?"))
    else:
        name = rng.choice(prices)
        obj[name] = "-" + obj[name]
    return json.dumps(obj, separators=(",", ":")).encode()


# TOPS: segments of up to this many messages, spanning at most this long. Real IEX only
# batches near-simultaneous messages; a wider span here means segments usually carry
# several messages, so consumers are exercised on multi-message segments.
MAX_SEGMENT_MESSAGES = 8
SEGMENT_SPAN_NS = 250_000_000
SEND_LATENCY_NS = 3_000  # segment send time after its last message's timestamp


def _segments(events: Sequence[Event], rng: random.Random) -> Iterator[list[Event]]:
    group: list[Event] = []
    limit = rng.randint(1, MAX_SEGMENT_MESSAGES)
    for event in events:
        if group and (len(group) >= limit or event.event_ns - group[0].event_ns > SEGMENT_SPAN_NS):
            yield group
            group, limit = [], rng.randint(1, MAX_SEGMENT_MESSAGES)
        group.append(event)
    if group:
        yield group


def _write_tops(path: Path, events: Sequence[Event], rng: random.Random, rate: float) -> int:
    bad = 0
    segments = iex_tops.SegmentWriter(session_id=rng.randint(1, 2**31))
    with RecordingWriter(path) as writer:
        for group in _segments(events, rng):
            send_ns = group[-1].event_ns + SEND_LATENCY_NS
            for event in group:
                if rate and rng.random() < rate:
                    # Its own segment, so the damage cannot take good messages with it.
                    writer.write(_bad_segment(segments, event, send_ns, rng))
                    bad += 1
            writer.write(segments.write(group, send_ns))
    return bad


def _bad_segment(
    segments: iex_tops.SegmentWriter, event: Event, send_ns: int, rng: random.Random
) -> bytes:
    """A one-message segment that parses to exactly one Malformed."""
    body = iex_tops.encode_event(event)
    kind = rng.choice(("length", "type", "header"))
    if kind == "type":
        body = bytes([rng.choice(b"Zzq\x00\xff")]) + body[1:]
    raw = bytearray(segments.write_messages([body], send_ns))
    if kind == "length":
        # The block claims more bytes than the payload holds; the header stays right,
        # so the recording's framing survives.
        raw[40:42] = (len(body) + rng.randint(1, 200)).to_bytes(2, "little")
    elif kind == "header":
        raw[2:4] = rng.choice((0x8002, 0x8004, 0x0000)).to_bytes(2, "little")
    return bytes(raw)
