"""The stream benchmark's feed: JSON-feed quotes into md.raw.nasdaq at a fixed rate.

Quote i is for symbol i % symbols, has event time base + i * step (step = 1 s / rate),
so a client's (symbol, event_ns) names the message exactly, and its bid moves every
time so each one changes the symbol's NBBO. Messages are encoded before sending;
every ms the sender sends however many are due, and stamps each one's wall-clock
time right before produce(): the moment it entered Kafka's client.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

import redis
from confluent_kafka import Producer

from infra.quote_store import quote_payload
from schemas.json_feed import encode_event
from schemas.marketdata import NBBO_VENUE, Quote

VENUE = "nasdaq"
PREFIX = "ZQ"
MS = 1_000_000


@dataclass(frozen=True, slots=True)
class Feed:
    rate: int
    seconds: float
    symbols: int
    warmup_s: float
    base_ns: int

    @property
    def width(self) -> int:
        return len(str(self.symbols - 1))

    @property
    def step(self) -> int:
        return 1_000_000_000 // self.rate

    @property
    def total(self) -> int:
        return int(self.rate * self.seconds)

    @property
    def warm(self) -> int:
        return int(self.rate * self.warmup_s)

    def symbol(self, k: int) -> str:
        return f"{PREFIX}{k % self.symbols:0{self.width}d}"

    def quote(self, i: int, event_ns: int, venue: str = VENUE) -> Quote:
        bid = Decimal(10_000 + (i // self.symbols) % 50).scaleb(-2)
        return Quote(
            symbol=self.symbol(i),
            venue=venue,
            bid_price=bid,
            bid_size=100,
            ask_price=bid + Decimal("0.05"),
            ask_size=200,
            event_ns=event_ns,
            receive_ns=event_ns,
        )

    def line(self, i: int, event_ns: int) -> bytes:
        return encode_event(self.quote(i, event_ns))


def produce(prod: Producer, topic: str, key: bytes, value: bytes) -> None:
    while True:
        try:
            prod.produce(topic, value=value, key=key)
            return
        except BufferError:
            prod.poll(0.001)


def prime_lines(feed: Feed) -> list[tuple[bytes, bytes]]:
    """One quote per symbol, a second before the feed's first: flows and books warm."""
    return [
        (feed.symbol(k).encode(), feed.line(k, feed.base_ns - 1_000_000_000 + k))
        for k in range(feed.symbols)
    ]


def send(feed: Feed, prod: Producer, topic: str, on_warm) -> tuple[list[int], int]:
    """Send the whole feed to Kafka at its rate; (send wall ns per message, most behind)."""
    keys = [feed.symbol(i).encode() for i in range(feed.symbols)]
    payloads = [feed.line(i, feed.base_ns + i * feed.step) for i in range(feed.total)]

    def out(i: int) -> None:
        produce(prod, topic, keys[i % feed.symbols], payloads[i])

    return _paced(feed, out, lambda: prod.poll(0), on_warm)


def publish(feed: Feed, client: redis.Redis, on_warm) -> tuple[list[int], int]:
    """The edge alone: PUBLISH each quote as the quotes flow would (an NBBO quote on
    quotes:{SYM}), at the feed's rate, bypassing Kafka and the flows."""
    channels = [f"quotes:{feed.symbol(i)}".encode() for i in range(feed.symbols)]
    payloads = [
        quote_payload(feed.quote(i, feed.base_ns + i * feed.step, NBBO_VENUE))
        for i in range(feed.total)
    ]
    pipe = client.pipeline(transaction=False)

    def out(i: int) -> None:
        pipe.publish(channels[i % feed.symbols], payloads[i])

    return _paced(feed, out, pipe.execute, on_warm)


def _paced(feed: Feed, out, flush, on_warm) -> tuple[list[int], int]:
    at = [0] * feed.total
    start = time.monotonic_ns()
    i = behind = tick = 0
    warmed = False
    while i < feed.total:
        due = min(feed.total, (time.monotonic_ns() - start) * feed.rate // 1_000_000_000 + 1)
        behind = max(behind, due - i)
        while i < due:
            at[i] = time.time_ns()
            out(i)
            i += 1
        flush()
        if not warmed and i >= feed.warm:
            warmed = True
            on_warm()
        tick += 1
        pause = start + tick * MS - time.monotonic_ns()
        if pause > 0:
            time.sleep(pause / 1e9)
    return at, behind
