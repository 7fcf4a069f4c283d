"""What order placement knows about a symbol right now, read from Redis (one round trip).

The layout is infra/quote_store.py's:
- tradable: some venue's `security:{SYM}` entry is a non-test issue;
- halted: any venue's `status:{SYM}` is halted or paused;
- bid/ask: the NBBO of `quote:{SYM}` when both of its prices are above zero;
- known: the symbol is in the `symbols` set (any market data at all).

The clock: `now` is the API process's clock, `app.state.clock` (a callable returning an
aware UTC datetime; wall time by default, see `wall_clock`). Tests replace it with a
fixed time to choose the session. A later issue will make it follow the feed's event
time during replays, so a replayed session trades in that session's hours.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import redis

from infra.aio_redis import LoopRedis, pairs
from infra.settings import Settings
from schemas.marketdata import NBBO_VENUE
from schemas.orders import MarketView
from schemas.sessions import market_session

Clock = Callable[[], datetime]
HALTED_STATES = frozenset({"halted", "paused"})
SYMBOLS_KEY = "symbols"


def wall_clock() -> datetime:
    return datetime.now(UTC)


def clock_for(settings: Settings) -> Callable[[], datetime]:
    """The wall, or with settings.clock_start a clock that starts there and runs with it."""
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
