"""candles: trades and breaks into ClickHouse, 1-minute candles rewritten from them.

    md.trades ─ decode ─► ClickHouse trades / trade_breaks ─► candles_1m (idempotent rewrite)
                                                              └► Redis pub/sub bars:{SYM}

Run: python -m bytewax.run flows.candles:flow -r .tapeflow/recovery/candles -s 2
(with TAPEFLOW_CLICKHOUSE_URL set; embedded chDB is hosted by `tapeflow run`.)
"""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.common import raw_source
from flows.kafka_io import RawMessage
from infra.bar_channel import BarPublisher
from infra.candle_store import CandleStore
from infra.clickhouse import shared_clickhouse
from infra.settings import Settings, get_settings
from infra.topics import topics_of
from schemas.marketdata import Trade, TradeBreak, from_wire


class _CandlePartition(StatelessSinkPartition[list[Trade | TradeBreak]]):
    def __init__(self, store: CandleStore) -> None:
        self.store = store

    def write_batch(self, items: list[list[Trade | TradeBreak]]) -> None:
        # Everything that arrived together in one write: few, large ClickHouse parts.
        self.store.apply([e for batch in items for e in batch])


class CandleSink(DynamicSink[list[Trade | TradeBreak]]):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CandlePartition:
        publish = BarPublisher(self.settings.redis)
        return _CandlePartition(CandleStore(shared_clickhouse(self.settings), on_rewrite=publish))


def decode(msgs: list[RawMessage]) -> list[list[Trade | TradeBreak]]:
    """One item per Kafka batch."""
    events = [from_wire(value) for _, _, value in msgs]
    for event in events:
        assert isinstance(event, Trade | TradeBreak), f"unexpected {event.kind} on md.trades"
    return [events] if events else []


def build(settings: Settings) -> Dataflow:
    t = topics_of(settings)
    flow = Dataflow("candles")
    # The broker holds a fetch up to 250 ms for 1 MiB of trades: looking for them every
    # 2 ms as the latency-bound flows do only burns CPU (in the API's process, by default).
    source = raw_source(settings, [t.trades], max_wait_ms=250, min_bytes=1 << 20, idle_ms=50)
    msgs = op.input("trades", flow, source)
    events = op.flat_map_batch("decode", msgs, decode)
    op.output("one_minute", events, CandleSink(settings))
    return flow


flow = build(get_settings())
