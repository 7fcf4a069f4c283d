"""quotes: the latest quote and status per symbol and venue (and NBBO) into Redis.

    md.quotes, md.status ─ decode ─► Redis quote:{SYM} / status:{SYM} (forward-only) + pub/sub
    md.trades ─────────── decode ─► Redis pub/sub trades:{SYM} (each trade, not stored)
    every event ───────── decode ─► Redis clock:feed_ns (newest event time, never back)

Run: python -m bytewax.run flows.quotes:flow -r .tapeflow/recovery/quotes -s 2
"""

from __future__ import annotations

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.common import raw_source
from flows.kafka_io import RawMessage
from infra.quote_store import Publish, QuoteStore, Write, wire_publish, wire_write
from infra.settings import Settings, get_settings
from infra.topics import topics_of

# (stored writes, publishes, the newest event time among the batch's messages)
Batch = tuple[list[Write], list[Publish], int]


class _RedisPartition(StatelessSinkPartition[Batch]):
    def __init__(self, store: QuoteStore) -> None:
        self.store = store

    def write_batch(self, items: list[Batch]) -> None:
        if len(items) == 1:
            writes, publishes, feed_ns = items[0]
        else:  # several Kafka batches at once: conflate across them too
            writes = newest([w for batch, _, _ in items for w in batch])
            publishes = [p for _, batch, _ in items for p in batch]
            feed_ns = max(ns for _, _, ns in items)
        # The feed clock rides in the same round trip as the quotes.
        self.store.write(writes, publishes, feed_ns)


class RedisQuoteSink(DynamicSink[Batch]):
    def __init__(self, url: str) -> None:
        self.url = url

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        return _RedisPartition(QuoteStore(self.url))


CONFLATED = frozenset({"quote", "security"})
# Stored, but never conflated: a halt and its resumption in one batch (a fast replay)
# are both written in order, so the halt is published on the stream too. They are rare.
EVERY_ONE = frozenset({"status"})
PUBLISHED = frozenset({"trade", "break"})


def newest(writes: list[Write]) -> list[Write]:
    """The newest write per (kind, symbol, venue), equal versions keeping the first; and
    every status write, in order."""
    best: dict[tuple[str, str, str], Write] = {}
    every: list[Write] = []
    for w in writes:
        if w[0] in EVERY_ONE:
            every.append(w)
            continue
        key = (w[0], w[1], w[2])
        held = best.get(key)
        if held is None or (len(w[3]), w[3]) > (len(held[3]), held[3]):
            best[key] = w
    return [*best.values(), *every]


def conflate(msgs: list[RawMessage]) -> list[Batch]:
    """One item per Kafka batch: the newest quote/security per (kind, symbol, venue),
    chosen on the decoded wire objects (most quotes in a busy batch lose), every status
    in order (the store keeps only the newest of those, but publishes each one it
    accepts), and every trade and break in order; other kinds are dropped. Equal
    versions keep the first, as Redis does. No event objects are built: the store's
    writes and publishes are encoded straight from the wire objects, whose prices are
    already the strings the events would give (infra.quote_store.wire_write). The item
    also carries the newest event time of every message, dropped kinds included: the
    feed clock."""
    held: dict[tuple[str, str, str], tuple[tuple[int, int], dict]] = {}
    statuses: list[dict] = []
    trades: list[dict] = []
    feed_ns = -1
    loads = orjson.loads
    for _, _, value in msgs:
        data = loads(value)
        if data["event_ns"] > feed_ns:
            feed_ns = data["event_ns"]
        kind = data["kind"]
        if kind in CONFLATED:
            key = (kind, data["symbol"], data["venue"])
            order = (data["event_ns"], data.get("seq", 0))
            current = held.get(key)
            if current is None or order > current[0]:
                held[key] = (order, data)
        elif kind in PUBLISHED:
            trades.append(data)
        elif kind in EVERY_ONE:
            statuses.append(data)
    if feed_ns < 0:
        return []
    writes = [wire_write(d) for d in (*(d for _, d in held.values()), *statuses)]
    return [(writes, [wire_publish(d) for d in trades], feed_ns)]


def build(settings: Settings) -> Dataflow:
    t = topics_of(settings)
    flow = Dataflow("quotes")
    msgs = op.input("normalized", flow, raw_source(settings, [t.quotes, t.status, t.trades]))
    batches = op.flat_map_batch("conflate", msgs, conflate)
    op.output("to_redis", batches, RedisQuoteSink(settings.redis))
    return flow


flow = build(get_settings())
