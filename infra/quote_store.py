"""Latest quotes and trading status in Redis, written only forward in event time.

Layout (one hash per symbol keeps a read to a single round trip):
- quote:{SYM}   field <venue> -> quote JSON, field <venue>:ns -> its event time
- status:{SYM}  the same shape for trading status per venue
- security:{SYM} the same shape for security directory entries per venue
- symbols       set of every symbol ever seen (unknown symbols answer 404)
- clock:feed_ns the newest event time (20-digit ns) the quotes flow has processed, only
                ever moved forward: the market clock in feed mode (infra/market_view.py)
Every accepted write is published on quotes:{SYM}, status:{SYM} or
securities:{SYM} for fan-out. Trades and trade breaks are not stored: each one
is published on trades:{SYM} as it comes (T "t" and T "x"), never conflated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import redis

from schemas.marketdata import Event, Quote, Security, Status, Trade, TradeBreak

# Versions (zero-padded event times) are compared as decimal strings: Lua numbers are
# doubles and would lose nanoseconds. Strings of digits order like the numbers.
# ARGV: key prefix, channel prefix, then (symbol, field, version, payload) per write.
_WRITE_IF_NEWER = """
local kp, cp, written = ARGV[1], ARGV[2], 0
for i = 3, #ARGV, 4 do
  local sym, field, version = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = kp .. sym
  local cur = redis.call('HGET', key, field .. ':ns')
  if not cur or #cur < #version or (#cur == #version and cur < version) then
    redis.call('HSET', key, field, ARGV[i + 3], field .. ':ns', version)
    redis.call('SADD', KEYS[1], sym)
    redis.call('PUBLISH', cp .. sym, ARGV[i + 3])
    written = written + 1
  end
end
return written
"""

# KEYS[1] = ARGV[1] when that is newer: both are 20-digit ns strings, compared as strings.
_ADVANCE_FEED_CLOCK = """
local cur = redis.call('GET', KEYS[1])
if not cur or #cur < #ARGV[1] or (#cur == #ARGV[1] and cur < ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

SYMBOLS_KEY = "symbols"
FEED_CLOCK_KEY = "clock:feed_ns"
WRITES_PER_CALL = 500  # bounds how long one script call blocks Redis


def _payload(code: str, fields: tuple[str, ...]) -> Callable[[Any], bytes]:
    """A JSON encoder for one event kind: its type code, then the named fields in order."""

    def encode(ev: Any) -> bytes:
        # Decimals become strings (default=str), tuples arrays: money never a JSON number.
        return orjson.dumps({"T": code, **{f: getattr(ev, f) for f in fields}}, default=str)

    return encode


def _wire_payload(code: str, fields: tuple[str, ...]) -> Callable[[dict[str, Any]], bytes]:
    """The same payload from an event's decoded wire object (schemas.marketdata.to_wire),
    byte for byte: there prices are already the strings str(Decimal) gives, and arrays
    are lists."""

    def encode(data: dict[str, Any]) -> bytes:
        return orjson.dumps({"T": code, **{f: data[f] for f in fields}})

    return encode


_TIMES = ("event_ns", "receive_ns")
_FIELDS = {
    "quote": ("q", ("symbol", "venue", "bid_price", "bid_size", "ask_price", "ask_size", *_TIMES)),
    "status": ("s", ("symbol", "venue", "state", "reason", *_TIMES)),
    "trade": ("t", ("symbol", "venue", "trade_id", "price", "size", "conditions", *_TIMES)),
    # A trade break (cancel) of an earlier trade of the same venue and trade id.
    "break": ("x", ("symbol", "venue", "trade_id", "price", "size", *_TIMES)),
    "security": ("d", ("symbol", "venue", "round_lot", "test", "event_ns")),
}
quote_payload = _payload(*_FIELDS["quote"])
status_payload = _payload(*_FIELDS["status"])
trade_payload = _payload(*_FIELDS["trade"])
break_payload = _payload(*_FIELDS["break"])
security_payload = _payload(*_FIELDS["security"])
_WIRE_PAYLOADS = {kind: _wire_payload(*spec) for kind, spec in _FIELDS.items()}

# One stored write: (kind, symbol, venue, version, payload); kind is quote, status or
# security. One publish-only event (trade, break): (channel, payload).
Write = tuple[str, str, str, str, bytes]
Publish = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class StoredQuote:
    venue: str
    bid_price: Decimal
    bid_size: int
    ask_price: Decimal
    ask_size: int
    event_ns: int
    receive_ns: int


def latest_per_key(events: Iterable[Event]) -> list[Quote | Status | Security]:
    """Conflate a batch to the newest quote / security per (kind, symbol, venue) (older
    ones would lose); every status passes, in order, so each halt and resumption the
    store accepts is published (as the quotes flow does)."""
    best: dict[tuple[str, str, str], Quote | Status | Security] = {}
    statuses: list[Status] = []
    for ev in events:
        if isinstance(ev, Status):
            statuses.append(ev)
        elif isinstance(ev, Quote | Security):
            key = (ev.kind, ev.symbol, ev.venue)
            held = best.get(key)
            if held is None or _order(ev) > _order(held):
                best[key] = ev
    return [*best.values(), *statuses]


# Redis key prefix and pub/sub channel prefix of each stored kind.
_LAYOUT = {
    "quote": ("quote:", "quotes:"),
    "status": ("status:", "status:"),
    "security": ("security:", "securities:"),
}
_EVENT_PAYLOADS = {
    "quote": quote_payload,
    "status": status_payload,
    "security": security_payload,
    "trade": trade_payload,
    "break": break_payload,
}


def _order(ev: Quote | Status | Security) -> str:
    return ev.version if isinstance(ev, Quote) else f"{ev.event_ns:020d}"


def write_of(ev: Quote | Status | Security) -> Write:
    return (ev.kind, ev.symbol, ev.venue, _order(ev), _EVENT_PAYLOADS[ev.kind](ev))


def publish_of(ev: Trade | TradeBreak) -> Publish:
    return (f"trades:{ev.symbol}", _EVENT_PAYLOADS[ev.kind](ev))


def wire_version(data: dict[str, Any]) -> str:
    """The version of a decoded quote/status/security wire object, as _order gives it."""
    if data["kind"] == "quote":
        return f"{data['event_ns']:020d}{data.get('seq', 0):022d}"
    return f"{data['event_ns']:020d}"


def wire_write(data: dict[str, Any]) -> Write:
    """write_of(from_dict(data)) without building the event (same bytes)."""
    kind = data["kind"]
    return (kind, data["symbol"], data["venue"], wire_version(data), _WIRE_PAYLOADS[kind](data))


def wire_publish(data: dict[str, Any]) -> Publish:
    """publish_of(from_dict(data)) without building the event (same bytes)."""
    return (f"trades:{data['symbol']}", _WIRE_PAYLOADS[data["kind"]](data))


class QuoteStore:
    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url)

    def apply(self, events: Iterable[Event]) -> int:
        """Write a batch (trades and breaks: publish each); how many writes moved forward."""
        events = list(events)
        return self.write(
            [write_of(ev) for ev in latest_per_key(events)],
            [publish_of(ev) for ev in events if isinstance(ev, Trade | TradeBreak)],
        )

    def write(
        self, writes: Iterable[Write], publishes: Iterable[Publish] = (), feed_ns: int | None = None
    ) -> int:
        """Each write only if newer than what its (kind, symbol, venue) holds, publishing
        the accepted ones; then every publish; and the feed clock moved up to feed_ns
        (never back), all in one round trip. How many writes moved forward."""
        pipe = self.redis.pipeline(transaction=False)
        # One script call per chunk, not per write: redis-py spends more time packing a
        # command than Redis spends running it. (Keys are built in the script, so this
        # runs on a single Redis, not a cluster.)
        by_kind: dict[str, list[str | bytes]] = {}
        for kind, symbol, venue, version, payload in writes:
            args = by_kind.get(kind)
            if args is None:
                args = by_kind[kind] = list(_LAYOUT[kind])
            args += (symbol, venue, version, payload)
        for args in by_kind.values():
            for start in range(2, len(args), 4 * WRITES_PER_CALL):
                chunk = args[start : start + 4 * WRITES_PER_CALL]
                # EVAL, not a registered script's EVALSHA: redis-py checks SCRIPT EXISTS
                # before every pipeline that holds one, a round trip per batch; Redis
                # finds the compiled script by the body's SHA1 either way.
                pipe.eval(_WRITE_IF_NEWER, 1, SYMBOLS_KEY, *args[:2], *chunk)
        n_scripts = len(pipe)
        for channel, payload in publishes:
            pipe.publish(channel, payload)
        if feed_ns is not None:
            pipe.eval(_ADVANCE_FEED_CLOCK, 1, FEED_CLOCK_KEY, f"{feed_ns:020d}")
        if not len(pipe):
            return 0
        return sum(pipe.execute()[:n_scripts])

    def feed_ns(self) -> int | None:
        """The newest event time the quotes flow has processed, None before any."""
        return feed_ns(self.redis)

    def known(self, symbols: list[str]) -> list[bool]:
        return [bool(x) for x in self.redis.smismember(SYMBOLS_KEY, symbols)]

    def quotes(self, symbol: str) -> dict[str, StoredQuote]:
        raw = self.redis.hgetall(f"quote:{symbol}")
        return {
            field.decode(): _stored(orjson.loads(value))
            for field, value in raw.items()
            if not field.endswith(b":ns")
        }

    def many_quotes(self, symbols: list[str]) -> dict[str, dict[str, StoredQuote]]:
        pipe = self.redis.pipeline(transaction=False)
        for s in symbols:
            pipe.hgetall(f"quote:{s}")
        out = {}
        for s, raw in zip(symbols, pipe.execute(), strict=True):
            out[s] = {
                f.decode(): _stored(orjson.loads(v))
                for f, v in raw.items()
                if not f.endswith(b":ns")
            }
        return out

    def statuses(self, symbol: str) -> dict[str, dict[str, Any]]:
        raw = self.redis.hgetall(f"status:{symbol}")
        return {f.decode(): orjson.loads(v) for f, v in raw.items() if not f.endswith(b":ns")}


def feed_ns(client: redis.Redis) -> int | None:
    raw = client.get(FEED_CLOCK_KEY)
    return None if raw is None else int(raw)


def _stored(d: dict[str, Any]) -> StoredQuote:
    return StoredQuote(
        venue=d["venue"],
        bid_price=Decimal(d["bid_price"]),
        bid_size=d["bid_size"],
        ask_price=Decimal(d["ask_price"]),
        ask_size=d["ask_size"],
        event_ns=d["event_ns"],
        receive_ns=d["receive_ns"],
    )
