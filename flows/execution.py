"""execution: the execution side. Orders from the ledger meet each symbol's desk; its
answers go back to the ledger.

    oms.orders ─────────── (read_committed) ─┐
    md.quotes, md.trades ─ feed time only ───┴ key_by_symbol ─ desk ─► oms.executions
                                                              (SymbolDesk    (keyed by
                                                               per symbol)    account)

The desk (schemas/execution.py) holds the symbol's open orders and the feed's clock;
Bytewax recovery snapshots it with the source offsets, so after a crash the flow resumes
from a consistent pair and repeats the answers since then with the same event ids (the
ledger applies each once). Market data costs one JSON decode and a max per message: in
each Kafka batch a run of market events of a symbol becomes one clock step.

oms.orders is written in Kafka transactions by the outbox relay, so it is read with
isolation.level=read_committed: records of an aborted transaction are never seen.

Issue 5 adds fills against the venues' quotes, triggers and time in force: the quotes
and trades will then travel to the desk whole instead of as a clock.

Run: python -m bytewax.run flows.execution:flow -r .tapeflow/recovery/execution -s 2
"""

from __future__ import annotations

import logging
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow

from flows.common import batch_sink, raw_source
from flows.kafka_io import OutMessage, RawMessage
from infra.settings import Settings, get_settings
from infra.topics import topics_of
from schemas.execution import SymbolDesk
from schemas.oms import decode, encode

log = logging.getLogger("tapeflow.execution")

ORDER, CLOCK = "order", "clock"
Step = tuple[str, Any]  # (ORDER, oms.orders message) | (CLOCK, feed event ns)
Work = tuple[str, list[Step]]  # (symbol, steps in arrival order)


def _symbol_of(msg: dict[str, Any], key: bytes | None) -> str:
    if key:
        return key.decode()
    return str(msg["order"]["symbol"] if msg.get("kind") == "new" else msg["symbol"])


def key_by_symbol(msgs: list[RawMessage], orders_topic: str) -> list[tuple[str, Work]]:
    """One item per symbol and Kafka batch: its order messages and feed clock, in order."""
    groups: dict[str, list[Step]] = {}
    loads = orjson.loads
    for topic, key, value in msgs:
        if topic == orders_topic:
            try:
                msg = decode(value)
                symbol = _symbol_of(msg, key)
            except Exception as exc:  # kept in Kafka; the desk cannot answer what it cannot read
                log.error("unreadable oms.orders message %r: %s", value[:200], exc)
                continue
            groups.setdefault(symbol, []).append((ORDER, msg))
            continue
        if not key:
            continue  # system events: no symbol
        try:
            event_ns = int(loads(value)["event_ns"])
        except Exception:
            continue
        steps = groups.setdefault(key.decode(), [])
        if steps and steps[-1][0] == CLOCK:
            if event_ns > steps[-1][1]:
                steps[-1] = (CLOCK, event_ns)
        else:
            steps.append((CLOCK, event_ns))
    return [(symbol, (symbol, steps)) for symbol, steps in groups.items()]


def run_desk(
    desk: SymbolDesk | None, work: Work, executions_topic: str
) -> tuple[SymbolDesk, list[OutMessage]]:
    """Feed the symbol's desk; its answers as oms.executions messages keyed by account."""
    symbol, steps = work
    desk = desk if desk is not None else SymbolDesk(symbol)
    answers: list[dict[str, Any]] = []
    for kind, payload in steps:
        try:
            if kind == CLOCK:
                answers += desk.on_market_time(payload)
            else:
                answers += desk.on_order_message(payload)
        except Exception:  # a bad message must not stop every symbol's execution
            log.exception("execution desk %s could not take %r", symbol, payload)
    return desk, [(executions_topic, a["account_id"].encode(), encode(a), None) for a in answers]


def build(settings: Settings) -> Dataflow:
    t = topics_of(settings)
    flow = Dataflow("execution")
    msgs = op.input(
        "orders_and_feed_time",
        flow,
        raw_source(
            settings,
            [t.orders, t.quotes, t.trades],
            config={"isolation.level": "read_committed"},
        ),
    )
    work = op.flat_map_batch("key_by_symbol", msgs, lambda batch: key_by_symbol(batch, t.orders))
    answered = op.stateful_map("desk", work, lambda desk, w: run_desk(desk, w, t.executions))
    answers = op.filter_value("with_answers", answered, bool)
    op.output("to_executions", answers, batch_sink(settings))
    return flow


flow = build(get_settings())
