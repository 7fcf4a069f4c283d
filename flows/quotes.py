"""quotes: the latest quote and status per symbol and venue (and NBBO) into Redis.

    md.quotes, md.status ─ decode ─► Redis quote:{SYM} / status:{SYM} (forward-only) + pub/sub
    md.trades ─────────── decode ─► Redis pub/sub trades:{SYM} (each trade, not stored)

Run: python -m bytewax.run flows.quotes:flow -r .tapeflow/recovery/quotes -s 2
"""

from __future__ import annotations

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.common import raw_source
from flows.kafka_io import RawMessage
from infra.quote_store import QuoteStore
from infra.settings import Settings, get_settings
from infra.topics import topics_of
from schemas.marketdata import Event, from_dict


class _RedisPartition(StatelessSinkPartition[list[Event]]):
    def __init__(self, store: QuoteStore) -> None:
        self.store = store

    def write_batch(self, items: list[list[Event]]) -> None:
        self.store.apply([e for batch in items for e in batch])


class RedisQuoteSink(DynamicSink[list[Event]]):
    def __init__(self, url: str) -> None:
        self.url = url

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        return _RedisPartition(QuoteStore(self.url))


STORED = frozenset({"quote", "status", "security"})
PUBLISHED = frozenset({"trade", "break"})


def conflate(msgs: list[RawMessage]) -> list[list[Event]]:
    """One item per Kafka batch: the newest quote/status/security per (kind, symbol,
    venue), chosen before building events (most quotes in a busy batch lose), then
    every trade and break in order. Equal versions keep the first, as Redis does."""
    newest: dict[tuple[str, str, str], tuple[tuple[int, int], dict]] = {}
    trades: list[dict] = []
    for _, _, value in msgs:
        data = orjson.loads(value)
        kind = data["kind"]
        if kind in STORED:
            key = (kind, data["symbol"], data["venue"])
            order = (data["event_ns"], data.get("seq", 0))
            held = newest.get(key)
            if held is None or order > held[0]:
                newest[key] = (order, data)
        elif kind in PUBLISHED:
            trades.append(data)
    events = [from_dict(d) for _, d in newest.values()] + [from_dict(d) for d in trades]
    return [events] if events else []


def build(settings: Settings) -> Dataflow:
    t = topics_of(settings)
    flow = Dataflow("quotes")
    msgs = op.input("normalized", flow, raw_source(settings, [t.quotes, t.status, t.trades]))
    batches = op.flat_map_batch("conflate", msgs, conflate)
    op.output("to_redis", batches, RedisQuoteSink(settings.redis))
    return flow


flow = build(get_settings())
