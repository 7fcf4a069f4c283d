"""normalize: every venue's raw feed into md.quotes / md.trades / md.status, plus the NBBO.

    md.raw.<venue> ─ parse ─┬─ malformed ──────────────────────────────► md.deadletter
                            └─ events ─ key_by_symbol ─ consolidate_nbbo ─► md.quotes|trades|status

Run: python -m bytewax.run flows.normalize:flow -w 2 -r .tapeflow/recovery/normalize -s 2
"""

from __future__ import annotations

import time

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.dataflow import Dataflow

from flows.common import deadletter_message, sink, source
from infra.settings import Settings, get_settings
from infra.topics import Topics, topics_of
from schemas.feeds import parse_raw
from schemas.marketdata import Event, Malformed, Quote, to_wire
from schemas.nbbo import NbboBook


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


def parse(msg: KafkaSourceMessage, t: Topics) -> list[Event | Malformed]:
    venue = t.venue_of(msg.topic or "")
    try:
        return parse_raw(msg.value or b"", venue, time.time_ns())
    except Exception as exc:  # a parser bug must not stop the flow; the input is kept
        return [Malformed(f"parser error: {type(exc).__name__}: {exc}", msg.value or b"", venue)]


def consolidate(book: NbboBook | None, event: Event) -> tuple[NbboBook | None, list[Event]]:
    if not isinstance(event, Quote):
        return book, [event]
    book = book or NbboBook()
    nbbo = book.update(event)
    return book, [event] if nbbo is None else [event, nbbo]


def to_message(event: Event, topic_of: dict[str, str]) -> KafkaSinkMessage:
    return KafkaSinkMessage(
        key=event.symbol.encode() or None, value=to_wire(event), topic=topic_of[event.kind]
    )


def build(settings: Settings) -> Dataflow:
    t = topics_of(settings)
    topic_of = topic_of_kind(t)
    flow = Dataflow("normalize")
    raw = op.input(
        "raw_feeds",
        flow,
        source(settings, [t.raw(v) for v in settings.venue_list], "tapeflow-normalize"),
    )
    parsed = op.flat_map("parse", raw, lambda msg: parse(msg, t))
    branch = op.branch("split_malformed", parsed, lambda item: isinstance(item, Malformed))
    dead = op.map("to_deadletter", branch.trues, lambda m: deadletter_message(m, t.deadletter))
    keyed = op.key_on("key_by_symbol", branch.falses, lambda e: e.symbol)
    consolidated = op.stateful_map("consolidate_nbbo", keyed, consolidate)
    events = op.flat_map("flatten", consolidated, lambda kv: kv[1])
    out = op.merge(
        "all_out", op.map("to_messages", events, lambda e: to_message(e, topic_of)), dead
    )
    op.output("publish", out, sink(settings))
    return flow


flow = build(get_settings())
