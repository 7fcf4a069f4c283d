"""Latest quotes and trading status in Redis, written only forward in event time.

Layout (one hash per symbol keeps a read to a single round trip):
- quote:{SYM}   field <venue> -> quote JSON, field <venue>:ns -> its event time
- status:{SYM}  the same shape for trading status per venue
- security:{SYM} the same shape for security directory entries per venue
- symbols       set of every symbol ever seen (unknown symbols answer 404)
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
_WRITE_IF_NEWER = """
local written = 0
for i = 1, #ARGV, 6 do
  local key, field, version = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local cur = redis.call('HGET', key, field .. ':ns')
  if not cur or #cur < #version or (#cur == #version and cur < version) then
    redis.call('HSET', key, field, ARGV[i + 3], field .. ':ns', version)
    redis.call('SADD', KEYS[1], ARGV[i + 5])
    redis.call('PUBLISH', ARGV[i + 4], ARGV[i + 3])
    written = written + 1
  end
end
return written
"""

SYMBOLS_KEY = "symbols"
WRITES_PER_CALL = 500  # bounds how long one script call blocks Redis


def _payload(code: str, fields: tuple[str, ...]) -> Callable[[Any], bytes]:
    """A JSON encoder for one event kind: its type code, then the named fields in order."""

    def encode(ev: Any) -> bytes:
        # Decimals become strings (default=str), tuples arrays: money never a JSON number.
        return orjson.dumps({"T": code, **{f: getattr(ev, f) for f in fields}}, default=str)

    return encode


_TIMES = ("event_ns", "receive_ns")
quote_payload = _payload(
    "q", ("symbol", "venue", "bid_price", "bid_size", "ask_price", "ask_size", *_TIMES)
)
status_payload = _payload("s", ("symbol", "venue", "state", "reason", *_TIMES))
trade_payload = _payload(
    "t", ("symbol", "venue", "trade_id", "price", "size", "conditions", *_TIMES)
)
# A trade break (cancel) of an earlier trade of the same venue and trade id.
break_payload = _payload("x", ("symbol", "venue", "trade_id", "price", "size", *_TIMES))
security_payload = _payload("d", ("symbol", "venue", "round_lot", "test", "event_ns"))


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
    """Conflate a batch to the newest event per (kind, symbol, venue); older ones would lose."""
    best: dict[tuple[str, str, str], Quote | Status | Security] = {}
    for ev in events:
        if isinstance(ev, Quote | Status | Security):
            key = (ev.kind, ev.symbol, ev.venue)
            held = best.get(key)
            if held is None or _order(ev) > _order(held):
                best[key] = ev
    return list(best.values())


# Redis key prefix, pub/sub channel prefix and payload of each stored kind.
_LAYOUT = {
    "quote": ("quote", "quotes", quote_payload),
    "status": ("status", "status", status_payload),
    "security": ("security", "securities", security_payload),
}


def _order(ev: Quote | Status | Security) -> str:
    return ev.version if isinstance(ev, Quote) else f"{ev.event_ns:020d}"


class QuoteStore:
    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url)
        self._write = self.redis.register_script(_WRITE_IF_NEWER)

    def apply(self, events: Iterable[Event]) -> int:
        """Write a batch (trades and breaks: publish each); how many writes moved forward."""
        events = list(events)
        pipe = self.redis.pipeline(transaction=False)
        # One script call per chunk, not per write: redis-py spends more time packing a
        # command than Redis spends running it. (Keys are passed as ARGV, so this runs
        # on a single Redis, not a cluster.)
        args: list = []
        for ev in latest_per_key(events):
            key, channel, payload = _LAYOUT[ev.kind]
            args += [
                f"{key}:{ev.symbol}",
                ev.venue,
                _order(ev),
                payload(ev),
                f"{channel}:{ev.symbol}",
                ev.symbol,
            ]
        for start in range(0, len(args), 6 * WRITES_PER_CALL):
            self._write(
                keys=[SYMBOLS_KEY], args=args[start : start + 6 * WRITES_PER_CALL], client=pipe
            )
        n_scripts = len(pipe)
        for ev in events:
            if isinstance(ev, Trade):
                pipe.publish(f"trades:{ev.symbol}", trade_payload(ev))
            elif isinstance(ev, TradeBreak):
                pipe.publish(f"trades:{ev.symbol}", break_payload(ev))
        return sum(pipe.execute()[:n_scripts])

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
