"""Publish a recording into Kafka md.raw.<venue>, paced by its own clock."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Producer

from infra.recording import Record, read_recording

SENT_HEADER = "tapeflow-sent-ns"


# Market data producers (this feed handler and the normalize flow's sink) linger 5 ms:
# the broker's CPU goes by produce request and by partition. A 10,000 msgs/s producer
# and consumer at 10 ms cost it 0.15-0.17 cores on 4 partitions and 0.08 on one (the
# default since); on one, 5 ms cost 0.10-0.17 and took ~5 ms off the hop's p99
# (bench/MEASUREMENTS.md, "WebSocket stream").
MARKET_DATA_LINGER_MS = 5


def producer(bootstrap: str, **extra: str) -> Producer:
    # Idempotent with acks=all: a retried send never lands twice in the raw topic.
    config = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": "true",
        "acks": "all",
        "linger.ms": str(MARKET_DATA_LINGER_MS),
        "compression.type": "lz4",
        "queue.buffering.max.messages": "1000000",
    }
    config.update(extra)
    return Producer(config)


@dataclass(frozen=True, slots=True)
class ReplayStats:
    messages: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def paced(
    records: Iterable[Record], speed: float | None, clock: Callable[[], int] = time.monotonic_ns
):
    """Yield records no sooner than their recorded spacing divided by speed (None: at once)."""
    start_wall = start_event = None
    for rec in records:
        if speed is not None:
            if start_event is None:
                start_wall, start_event = clock(), rec.event_ns
            due = start_wall + (rec.event_ns - start_event) / speed
            wait = due - clock()
            if wait > 0:
                time.sleep(wait / 1e9)
        yield rec


def replay(
    path: Path,
    venue: str,
    bootstrap: str,
    speed: float | None = 1.0,
    topic: str | None = None,
) -> ReplayStats:
    """speed=None replays as fast as possible. Segments (no key) are keyed by venue so one
    venue's feed stays in order on one partition, as its multicast channel is."""
    prod = producer(bootstrap)
    topic = topic or f"md.raw.{venue}"
    started = time.perf_counter()
    count = 0
    for rec in paced(read_recording(path), speed):
        while True:
            try:
                prod.produce(
                    topic,
                    value=rec.payload,
                    key=rec.key or venue.encode(),
                    headers=[(SENT_HEADER, str(time.time_ns()).encode())],
                )
                break
            except BufferError:  # local queue full: let the network catch up
                prod.poll(0.05)
        prod.poll(0)
        count += 1
    prod.flush()
    return ReplayStats(count, time.perf_counter() - started)
