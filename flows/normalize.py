"""normalize: every venue's raw feed into md.quotes / md.trades / md.status, plus the NBBO.

    md.raw.<venue> ─ parse_batch ─ (shard, events) ─ consolidate_nbbo ─► md.quotes|trades|status
                                 └ ("dead", malformed) ────────────────► md.deadletter

Bytewax pays a few microseconds per item and operator, more than parsing a quote
costs, so items here are whole Kafka batches grouped by shard (a stable hash of
the symbol): the NBBO state of a shard's symbols lives under one key, and each
operator runs once per shard and batch instead of once per message.

Run: python -m bytewax.run flows.normalize:flow -w 2 -r .tapeflow/recovery/normalize -s 2
"""

from __future__ import annotations

import time
import zlib

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from flows.common import batch_sink, deadletter_out, raw_source
from flows.kafka_io import OutMessage, RawMessage
from infra.replay import MARKET_DATA_LINGER_MS
from infra.settings import Settings, get_settings
from infra.topics import Topics, topics_of
from schemas.feeds import parse_raw
from schemas.marketdata import Event, Malformed, Quote, to_wire
from schemas.nbbo import NbboBook

SHARDS = 32
DEAD = "dead"
Books = dict[str, NbboBook]


def topic_of_kind(t: Topics) -> dict[str, str]:
    return {
        "quote": t.quotes,
        "trade": t.trades,
        "break": t.trades,
        "status": t.status,
        "security": t.status,
        "official": t.status,
        "system": t.status,
    }


def shard_of(symbol: str) -> str:
    # crc32, not hash(): Python salts str hashes per process, and recovery needs the
    # same symbol in the same shard after a restart.
    return str(zlib.crc32(symbol.encode()) % SHARDS)


def parse(msg: RawMessage, t: Topics, receive_ns: int) -> list[Event | Malformed]:
    topic, _, value = msg
    venue = t.venue_of(topic)
    try:
        return parse_raw(value or b"", venue, receive_ns)
    except Exception as exc:  # a parser bug must not stop the flow; the input is kept
        return [Malformed(f"parser error: {type(exc).__name__}: {exc}", value or b"", venue)]


def parse_batch(msgs: list[RawMessage], t: Topics) -> list[tuple[str, list[Event | Malformed]]]:
    """Parse a Kafka batch and group its items by shard, in arrival order."""
    receive_ns = time.time_ns()
    groups: dict[str, list[Event | Malformed]] = {}
    for msg in msgs:
        for item in parse(msg, t, receive_ns):
            key = DEAD if isinstance(item, Malformed) else shard_of(item.symbol)
            groups.setdefault(key, []).append(item)
    return list(groups.items())


def consolidate(books: Books | None, events: list[Event]) -> tuple[Books, list[Event]]:
    """Pass every event on, then each symbol's NBBO if the batch changed it.

    Only the batch's last NBBO per symbol is published: the ones before it are
    already superseded when it goes out, and readers keep only the newest anyway.
    """
    books = books if books is not None else {}
    nbbos: dict[str, Quote] = {}
    for event in events:
        if isinstance(event, Quote):
            book = books.get(event.symbol)
            if book is None:
                book = books[event.symbol] = NbboBook()
            nbbo = book.update(event)
            if nbbo is not None:
                nbbos[event.symbol] = nbbo
    return books, [*events, *nbbos.values()]


def to_messages(
    state: Books | None, items: list, t: Topics, topic_of: dict[str, str]
) -> tuple[Books | None, list[OutMessage]]:
    if items and isinstance(items[0], Malformed):  # the DEAD group holds only these
        return state, [deadletter_out(m, t.deadletter) for m in items]
    state, events = consolidate(state, items)
    return state, [(topic_of[e.kind], e.symbol.encode() or None, to_wire(e), None) for e in events]


def build(settings: Settings) -> Dataflow:
    t = topics_of(settings)
    topic_of = topic_of_kind(t)
    flow = Dataflow("normalize")
    raw = op.input("raw_feeds", flow, raw_source(settings, [t.raw(v) for v in settings.venue_list]))
    sharded = op.flat_map_batch("parse_batch", raw, lambda msgs: parse_batch(msgs, t))
    published = op.stateful_map(
        "consolidate_nbbo",
        sharded,
        lambda state, items: to_messages(state, items, t, topic_of),
    )
    # The feed handler's linger: market data is most of the broker's produce requests.
    op.output("publish", published, batch_sink(settings, linger_ms=MARKET_DATA_LINGER_MS))
    return flow


flow = build(get_settings())
