"""What order placement knows about a symbol right now, read from Redis (one round trip).

The layout is infra/quote_store.py's:
- tradable: some venue's `security:{SYM}` entry is a non-test issue;
- halted: any venue's `status:{SYM}` is halted or paused;
- bid/ask: the NBBO of `quote:{SYM}` when both of its prices are above zero;
- known: the symbol is in the `symbols` set (any market data at all).

The clock: `now` is the API process's clock, `app.state.clock` (a callable returning an
aware UTC datetime), made by `clock_for(settings)`: the wall (TAPEFLOW_CLOCK=wall, the
default; TAPEFLOW_CLOCK_START shifts it), or the feed's own time (TAPEFLOW_CLOCK=feed:
the newest event time the quotes flow has processed, `FeedClock`), so a replayed session
trades in that session's hours. Tests may replace it with a fixed time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

import orjson
import redis

from infra.aio_redis import LoopRedis, pairs
from infra.quote_store import feed_ns
from infra.settings import Settings
from schemas.marketdata import NBBO_VENUE, utc_from_ns
from schemas.orders import MarketView
from schemas.sessions import market_session

Clock = Callable[[], datetime]
ClockSource = Literal["wall", "feed"]
HALTED_STATES = frozenset({"halted", "paused"})
SYMBOLS_KEY = "symbols"
# How long a FeedClock trusts its last read: orders placed within it share one Redis
# round trip; the feed clock lags the flow by at most this (plus the flow's batching).
FEED_CLOCK_TTL_S = 0.05
FEED_CLOCK_RETRY_S = 1.0  # after Redis failed to answer, keep the last time this long
FEED_CLOCK_TIMEOUT_S = 0.25  # the order path waits at most this for a read


def wall_clock() -> datetime:
    return datetime.now(UTC)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
from_ns = utc_from_ns


class FeedClock:
    """The newest feed event time the quotes flow has processed (Redis clock:feed_ns, see
    infra/quote_store.py), read at most once per ttl_s; `fallback` answers until any feed
    time exists. It never moves back in this process, and stands still while the feed is
    quiet (after a replay, or overnight)."""

    def __init__(
        self, client: redis.Redis, fallback: Clock, ttl_s: float = FEED_CLOCK_TTL_S
    ) -> None:
        self.redis, self.fallback, self.ttl_s = client, fallback, ttl_s
        self._held: datetime | None = None
        self._lock = threading.Lock()  # sync routes read it from the thread pool
        self._fresh_until = 0.0  # time.monotonic() until which _held is trusted

    def read(self) -> tuple[datetime, ClockSource]:
        """(now, which clock answered)."""
        now = time.monotonic()
        if now >= self._fresh_until:
            self._refresh(now)
        held = self._held
        return (self.fallback(), "wall") if held is None else (held, "feed")

    def __call__(self) -> datetime:
        return self.read()[0]

    def _refresh(self, now: float) -> None:
        try:
            ns = feed_ns(self.redis)
        except redis.RedisError:  # keep the last time; order placement must not stall
            self._fresh_until = now + FEED_CLOCK_RETRY_S
            return
        if ns is not None:
            at = from_ns(ns)
            with self._lock:
                if self._held is None or at > self._held:
                    self._held = at
        self._fresh_until = now + self.ttl_s


def clock_for(settings: Settings) -> Callable[[], datetime]:
    """The market clock settings.clock names: the wall (shifted to start at
    settings.clock_start when that is set), or a FeedClock falling back to it."""
    wall = _wall_for(settings)
    if settings.clock == "wall":
        return wall
    client = redis.Redis.from_url(
        settings.redis,
        socket_timeout=FEED_CLOCK_TIMEOUT_S,
        socket_connect_timeout=FEED_CLOCK_TIMEOUT_S,
    )
    return FeedClock(client, wall)


def clock_reading(clock: Clock) -> tuple[datetime, ClockSource]:
    """(now, source) of any clock: a FeedClock says; every other clock is a wall."""
    if isinstance(clock, FeedClock):
        return clock.read()
    return clock(), "wall"


def _wall_for(settings: Settings) -> Clock:
    start = settings.clock_start
    if start is None:
        return wall_clock
    if start.tzinfo is None:
        raise ValueError("TAPEFLOW_CLOCK_START needs an offset, e.g. 2026-11-24T15:00:00Z")
    offset = start - datetime.now(UTC)
    return lambda: datetime.now(UTC) + offset


@dataclass(frozen=True, slots=True)
class SymbolView:
    known: bool
    market: MarketView


def _entries(raw: dict[bytes, bytes]) -> list[dict]:
    return [orjson.loads(v) for f, v in raw.items() if not f.endswith(b":ns")]


def two_sided(raw: bytes | None) -> tuple[Decimal, Decimal] | None:
    """(bid, ask) of a stored quote payload when both sides are above zero."""
    if not raw:
        return None
    q = orjson.loads(raw)
    bid, ask = Decimal(q["bid_price"]), Decimal(q["ask_price"])
    return (bid, ask) if bid > 0 and ask > 0 else None


def _queue_view(pipe: redis.client.Pipeline, symbol: str) -> None:
    pipe.sismember(SYMBOLS_KEY, symbol)
    pipe.hgetall(f"security:{symbol}")
    pipe.hgetall(f"status:{symbol}")
    pipe.hget(f"quote:{symbol}", NBBO_VENUE)


def symbol_view(client: redis.Redis, symbol: str, now: datetime) -> SymbolView:
    pipe = client.pipeline(transaction=False)
    _queue_view(pipe, symbol)
    return _view(now, *pipe.execute())


async def symbol_view_async(client: LoopRedis, symbol: str, now: datetime) -> SymbolView:
    """symbol_view on the running event loop (infra/aio_redis.py): the same round trip."""
    known, securities, statuses, nbbo = await client.execute(
        ("SISMEMBER", SYMBOLS_KEY, symbol),
        ("HGETALL", f"security:{symbol}"),
        ("HGETALL", f"status:{symbol}"),
        ("HGET", f"quote:{symbol}", NBBO_VENUE),
    )
    return _view(now, known, pairs(securities), pairs(statuses), nbbo)


def _view(
    now: datetime, known: int, securities: dict, statuses: dict, nbbo: bytes | None
) -> SymbolView:
    quote = two_sided(nbbo)
    market = MarketView(
        now=now,
        session=market_session(now),
        tradable=any(not s.get("test", False) for s in _entries(securities)),
        halted=any(s.get("state") in HALTED_STATES for s in _entries(statuses)),
        bid=quote[0] if quote else None,
        ask=quote[1] if quote else None,
    )
    return SymbolView(bool(known), market)


def mids(client: redis.Redis, symbols: Iterable[str]) -> dict[str, Decimal]:
    """The NBBO midpoint of each symbol that has a two-sided quote (others are absent)."""
    symbols = list(symbols)
    if not symbols:
        return {}
    pipe = client.pipeline(transaction=False)
    for s in symbols:
        pipe.hget(f"quote:{s}", NBBO_VENUE)
    out = {}
    for s, raw in zip(symbols, pipe.execute(), strict=True):
        quote = two_sided(raw)
        if quote:
            out[s] = (quote[0] + quote[1]) / 2
    return out
