"""What the end-to-end tests compute on their own, straight from the recording files."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from infra.recording import read_recording
from schemas.candles import Candle, build_candles
from schemas.feeds import parse_raw
from schemas.marketdata import Malformed, Quote, Trade, TradeBreak
from schemas.nbbo import NbboBook

T = TypeVar("T")


def parse_recording(path: Path, venue: str) -> tuple[list, list[Malformed]]:
    events, bad = [], []
    for rec in read_recording(path):
        for item in parse_raw(rec.payload, venue, 0):
            (bad if isinstance(item, Malformed) else events).append(item)
    return events, bad


def expected_candles(recordings: dict[str, Path]) -> dict[str, list[Candle]]:
    trades = []
    for venue, path in recordings.items():
        events, _ = parse_recording(path, venue)
        trades += [e for e in events if isinstance(e, Trade | TradeBreak)]
    out: dict[str, list[Candle]] = {}
    for (symbol, _), candle in sorted(build_candles(trades).items()):
        out.setdefault(symbol, []).append(candle)
    return out


def expected_last_quotes(recordings: dict[str, Path]) -> dict[str, dict[str, Quote]]:
    """Latest quote per symbol and venue, and the NBBO a consolidated book ends on."""
    latest: dict[str, dict[str, Quote]] = {}
    for venue, path in recordings.items():
        events, _ = parse_recording(path, venue)
        for e in events:
            if isinstance(e, Quote):
                held = latest.setdefault(e.symbol, {}).get(venue)
                if held is None or e.event_ns > held.event_ns:
                    latest[e.symbol][venue] = e
    return latest


def nbbo_of(quotes: dict[str, Quote]) -> Quote | None:
    # Fed in event-time order, the book's last NBBO has the final prices and sizes.
    book = NbboBook()
    for q in sorted(quotes.values(), key=lambda q: q.event_ns):
        book.update(q)
    return book.last


def candle_from_api(symbol: str, row: dict) -> Candle:
    def dec(v: str | None) -> Decimal | None:
        return None if v is None else Decimal(v)

    from datetime import datetime

    start = datetime.fromisoformat(row["start"].replace("Z", "+00:00"))
    return Candle(
        symbol=symbol,
        start_ns=int(start.timestamp()) * 1_000_000_000,
        open=dec(row["open"]),
        high=dec(row["high"]),
        low=dec(row["low"]),
        close=dec(row["close"]),
        volume=row["volume"],
        vwap=dec(row["vwap"]),
        trades=row["trades"],
    )


def eventually(probe: Callable[[], T], done: Callable[[T], bool], timeout_s: float = 120) -> T:
    """Poll until done(probe()) or the timeout; return the last value either way."""
    deadline = time.monotonic() + timeout_s
    value = probe()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.5)
        value = probe()
    return value


def read_topic(bootstrap: str, topic: str, idle_s: float = 2.0) -> list:
    """Every message of a topic from the start, until it has been idle for idle_s."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{time.time_ns()}",
            "enable.auto.commit": "false",
        }
    )
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
    out, last = [], time.monotonic()
    while time.monotonic() - last < idle_s:
        batch = [m for m in consumer.consume(1000, 0.2) if m.error() is None]
        if batch:
            out += batch
            last = time.monotonic()
    consumer.close()
    return out


def until(probe: Callable[[], T], timeout: float = 120) -> T:
    """`eventually` something true (returned), or the test fails."""
    value = eventually(probe, bool, timeout)
    assert value, "timed out"
    return value
