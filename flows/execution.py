"""execution: the execution side. Orders from the ledger meet each symbol's desk; its
answers go back to the ledger.

    oms.orders ───────────────────── (read_committed) ─┐
    md.quotes, md.trades, md.status ─ venue events ────┴ key_by_symbol ─ desk ─► oms.executions
                                                           (SymbolDesk     (keyed by
                                                            per symbol)     account)
                                                                         ─► venues.executions
                                                                            (keyed by symbol)

The desk (schemas/execution.py) holds the symbol's open orders, the venues' quotes,
trading states and the feed's clock, and fills by the fill model (schemas/fill_model.py,
from TAPEFLOW_FILL_* settings). Bytewax recovery snapshots it with the source offsets,
so after a crash the flow resumes
from a consistent pair and repeats the answers since then with the same event ids (the
ledger applies each once). Venue quotes, trades and trading states reach the desk whole
(decoded JSON); everything else (NBBO quotes, breaks, directory and system events) only
moves its clock, and in each Kafka batch a run of those becomes one clock step.

Each fill also goes, in the same output step, to venues.executions as the venue's own
execution report (schemas/reconciliation.py): the record `tapeflow reconcile` checks the
ledger against. A replay after a crash repeats reports with the same ids and contents.

oms.orders is written in Kafka transactions by the outbox relay, so it is read with
isolation.level=read_committed: records of an aborted transaction are never seen.

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
from schemas.execution import SymbolDesk, Working
from schemas.fill_model import FillModel
from schemas.marketdata import NBBO_VENUE
from schemas.oms import decode, encode
from schemas.reconciliation import venue_report

log = logging.getLogger("tapeflow.execution")

ORDER, CLOCK, MARKET = "order", "clock", "market"
# (ORDER, oms.orders message) | (CLOCK, feed event ns) | (MARKET, decoded venue event)
Step = tuple[str, Any]
Work = tuple[str, list[Step]]  # (symbol, steps in arrival order)


def _symbol_of(msg: dict[str, Any], key: bytes | None) -> str:
    if key:
        return key.decode()
    return str(msg["order"]["symbol"] if msg.get("kind") == "new" else msg["symbol"])


def _for_desk(event: dict[str, Any]) -> bool:
    """A venue's quote, a trade or a trading state: what the desk fills and triggers by."""
    kind = event.get("kind")
    if kind == "quote":
        return event.get("venue", NBBO_VENUE) != NBBO_VENUE
    return kind in ("trade", "status")


def key_by_symbol(msgs: list[RawMessage], orders_topic: str) -> list[tuple[str, Work]]:
    """One item per symbol and Kafka batch: its order messages, venue events and feed
    clock, in arrival order."""
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
            event = loads(value)
            event_ns = int(event["event_ns"])
        except Exception:
            continue
        steps = groups.setdefault(key.decode(), [])
        if _for_desk(event):
            steps.append((MARKET, event))
            continue
        if steps and steps[-1][0] == CLOCK:
            if event_ns > steps[-1][1]:
                steps[-1] = (CLOCK, event_ns)
        else:
            steps.append((CLOCK, event_ns))
    return [(symbol, (symbol, steps)) for symbol, steps in groups.items()]


def fill_model(settings: Settings) -> FillModel:
    return FillModel(
        latency_ms=settings.fill_latency_ms,
        fraction_min=settings.fill_fraction_min,
        fraction_max=settings.fill_fraction_max,
        min_qty=settings.fill_min_qty,
        slippage_ticks=settings.fill_slippage_ticks,
        seed=settings.fill_seed,
    )


def run_desk(
    desk: SymbolDesk | None,
    work: Work,
    executions_topic: str,
    model: FillModel | None = None,
    reports_topic: str | None = None,
) -> tuple[SymbolDesk, list[OutMessage]]:
    """Feed the symbol's desk; its answers as oms.executions messages keyed by account,
    and with `reports_topic` each fill's venue execution report too, keyed by symbol.
    A new desk takes `model`; a desk restored from a snapshot keeps its own."""
    symbol, steps = work
    desk = desk if desk is not None else SymbolDesk(symbol, model=model or FillModel())
    # The orders open before this work: a fill answer has no side, and an order that
    # fills completely leaves the desk (a shallow copy: the desk's own loops copy more).
    before = dict(desk.orders) if reports_topic and desk.orders else {}
    answers: list[dict[str, Any]] = []
    for kind, payload in steps:
        try:
            if kind == MARKET:
                answers += desk.on_market(payload)
            elif kind == CLOCK:
                answers += desk.on_market_time(payload)
            else:
                answers += desk.on_order_message(payload)
        except Exception:  # a bad message must not stop every symbol's execution
            log.exception("execution desk %s could not take %r", symbol, payload)
    out: list[OutMessage] = [
        (executions_topic, a["account_id"].encode(), encode(a), None) for a in answers
    ]
    if reports_topic:
        out += _venue_reports(desk, before, steps, answers, reports_topic)
    return desk, out


def _venue_reports(
    desk: SymbolDesk,
    before: dict[str, Working],
    steps: list[Step],
    answers: list[dict[str, Any]],
    topic: str,
) -> list[OutMessage]:
    """The venues' own execution report of each fill (schemas/reconciliation.py), keyed
    by symbol. The side is the order's: open at the desk now or before this work, else
    brought by this work's new or replace message."""
    fills = [a for a in answers if a["kind"] == "fill"]
    if not fills:
        return []
    key = desk.symbol.encode()
    brought: dict[str, str] | None = None
    out: list[OutMessage] = []
    for a in fills:
        oid = a["order_id"]
        working = desk.orders.get(oid) or before.get(oid)
        if working is not None:
            side = working.order.side
        else:
            if brought is None:
                brought = {
                    str(p["order"].get("id")): str(p["order"].get("side"))
                    for kind, p in steps
                    if kind == ORDER and isinstance(p.get("order"), dict)
                }
            side = brought.get(oid, "")
        out.append((topic, key, encode(venue_report(a, side)), None))
    return out


def build(settings: Settings) -> Dataflow:
    t = topics_of(settings)
    model = fill_model(settings)
    flow = Dataflow("execution")
    msgs = op.input(
        "orders_and_feed_time",  # the id recovery snapshots are kept under
        flow,
        raw_source(
            settings,
            [t.orders, t.quotes, t.trades, t.status],
            config={"isolation.level": "read_committed"},
        ),
    )
    work = op.flat_map_batch("key_by_symbol", msgs, lambda batch: key_by_symbol(batch, t.orders))
    answered = op.stateful_map(
        "desk", work, lambda desk, w: run_desk(desk, w, t.executions, model, t.venue_reports)
    )
    answers = op.filter_value("with_answers", answered, bool)
    op.output("to_executions", answers, batch_sink(settings))
    return flow


flow = build(get_settings())
