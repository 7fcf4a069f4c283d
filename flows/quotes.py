"""quotes: the latest quote and status per symbol and venue (and NBBO) into Redis.

    md.quotes, md.status ─ decode ─► Redis quote:{SYM} / status:{SYM} (forward-only) + pub/sub
    md.trades ─────────── decode ─► Redis pub/sub trades:{SYM} (each trade, not stored)

Run: python -m bytewax.run flows.quotes:flow -r .tapeflow/recovery/quotes -s 2
"""

from __future__ import annotations

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.common import source
from infra.quote_store import QuoteStore
from infra.settings import Settings, get_settings
from infra.topics import topics_of
from schemas.marketdata import Event, from_wire


class _RedisPartition(StatelessSinkPartition[Event]):
    def __init__(self, store: QuoteStore) -> None:
        self.store = store

    def write_batch(self, items: list[Event]) -> None:
        self.store.apply(items)


class RedisQuoteSink(DynamicSink[Event]):
    def __init__(self, url: str) -> None:
        self.url = url

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        return _RedisPartition(QuoteStore(self.url))


def decode(msg: KafkaSourceMessage) -> Event:
    return from_wire(msg.value)


def build(settings: Settings) -> Dataflow:
    t = topics_of(settings)
    flow = Dataflow("quotes")
    msgs = op.input(
        "normalized", flow, source(settings, [t.quotes, t.status, t.trades], "tapeflow-quotes")
    )
    events = op.map("decode", msgs, decode)
    op.output("to_redis", events, RedisQuoteSink(settings.redis))
    return flow


flow = build(get_settings())
