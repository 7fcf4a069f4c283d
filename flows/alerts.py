"""alerts: price alerts evaluated on the live trades and quotes, keyed by symbol.

    alerts.definitions (read_committed) ─┐
    md.trades (eligible prints) ─────────┼ key_by_symbol ─ evaluate ─► record: PostgreSQL
    md.quotes (venue quotes) ────────────┘  (SymbolAlerts   (alert_fires, account_events)
                                             per symbol)     then PUBLISH account:{id}

Every create, change and cancel of an alert is written by the API to the outbox in its
own transaction and relayed to `alerts.definitions` (keyed by symbol, in Kafka
transactions, hence read_committed). Each symbol's `SymbolAlerts` (schemas/alerts.py)
holds its active alerts, its last trade price and NBBO midpoint (from its own NBBO book
of the venues' quotes: md.quotes' NBBO is conflated per normalize batch, and a mid alert
must see every move), and the last regular-session trade of each day (its closes, for
percent alerts); Bytewax recovery snapshots it
with the source offsets, and a flow started on an empty recovery store rebuilds it all
from the topics.

Firings go to `infra.alerts.record_firing`, which stores each once (its id is derived
from the alert and the crossing event, inserted ON CONFLICT DO NOTHING; PostgreSQL also
refuses firings of an alert no longer active, a second firing of a one-shot alert, and a
recurring one's within its cool-down), logs it as an account event and, after the
commit, publishes it to Redis `account:{account_id}` for WS /v1/stream. After a crash the
flow resumes from its last snapshot and evaluates the same events again: what it fires
again is already stored, so nothing is notified twice.

Run: python -m bytewax.run flows.alerts:flow -r .tapeflow/recovery/alerts -s 2
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal
from typing import Any

import bytewax.operators as op
import orjson
import psycopg
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.common import raw_source
from flows.kafka_io import RawMessage
from infra.settings import Settings, get_settings
from infra.topics import topics_of
from schemas.alerts import NBBO, AlertDef, Firing, SymbolAlerts
from schemas.marketdata import Quote

log = logging.getLogger("tapeflow.alerts")

DEFINE, TRADE, QUOTE = "define", "trade", "quote"
Step = tuple[str, Any]
Work = tuple[str, list[Step]]  # (symbol, steps in arrival order)
RETRIES = 5


def key_by_symbol(msgs: list[RawMessage], alerts_topic: str, quotes_topic: str) -> list:
    """One item per symbol and Kafka batch: its definitions, eligible trades and venue
    quotes, in arrival order (each source keeps its partition's order)."""
    groups: dict[str, list[Step]] = {}
    loads = orjson.loads
    for topic, _key, value in msgs:
        try:
            if topic == alerts_topic:
                msg = loads(value)
                alert = AlertDef.from_json(msg["alert"])
                groups.setdefault(alert.symbol, []).append((DEFINE, alert))
            elif topic == quotes_topic:
                q = loads(value)
                if q.get("kind") != "quote" or q.get("venue") == NBBO:
                    continue  # the flow consolidates its own NBBO, every change of it
                quote = Quote(
                    q["symbol"],
                    q["venue"],
                    Decimal(q["bid_price"]),
                    int(q["bid_size"]),
                    Decimal(q["ask_price"]),
                    int(q["ask_size"]),
                    int(q["event_ns"]),
                    int(q.get("receive_ns", 0)),
                )
                groups.setdefault(quote.symbol, []).append((QUOTE, quote))
            else:
                t = loads(value)
                if t.get("kind") != "trade" or not t.get("updates_last", True):
                    continue  # breaks, ineligible prints: never a last sale
                groups.setdefault(t["symbol"], []).append(
                    (
                        TRADE,
                        (Decimal(t["price"]), int(t["event_ns"]), t["venue"], str(t["trade_id"])),
                    )
                )
        except Exception as exc:  # kept in Kafka; one bad message must not stop alerts
            log.error("unreadable %s message %r: %s", topic, value[:200], exc)
    return [(symbol, (symbol, steps)) for symbol, steps in groups.items()]


def evaluate(state: SymbolAlerts | None, work: Work) -> tuple[SymbolAlerts, list[Firing]]:
    symbol, steps = work
    state = state if state is not None else SymbolAlerts(symbol)
    fired: list[Firing] = []
    for kind, payload in steps:
        if kind == DEFINE:
            state.define(payload)
        elif kind == TRADE:
            fired += state.on_trade(*payload)
        else:
            fired += state.on_quote(payload)
    return state, fired


class _FiringPartition(StatelessSinkPartition[list[Firing]]):
    def __init__(self, settings: Settings) -> None:
        import redis

        from infra import db

        self.pool = db.pool(settings.postgres)
        self.redis = redis.Redis.from_url(
            settings.redis, socket_timeout=0.5, socket_connect_timeout=0.5
        )

    def write_batch(self, items: list[list[Firing]]) -> None:
        from infra import account_events

        events = []
        with self.pool.connection() as conn:
            for firing in (f for batch in items for f in batch):
                event = self._record(conn, firing)
                if event is not None:
                    events.append(event)
        # After the commits: a failed publish is caught up by the stream from the log.
        account_events.publish(self.redis, events)

    @staticmethod
    def _record(conn: psycopg.Connection, firing: Firing):
        from infra.alerts import record_firing

        for attempt in range(RETRIES):
            try:
                event = record_firing(conn, firing)
                if event is not None:
                    log.info("alert %s fired at %s (%s)", firing.alert_id, firing.price, firing.id)
                return event
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
                if attempt == RETRIES - 1:
                    raise
                log.info("firing %s: %s; retrying", firing.id, exc)
                time.sleep(0.005 * (attempt + 1))
        return None

    def close(self) -> None:
        self.redis.close()


class FiringSink(DynamicSink[list[Firing]]):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _FiringPartition:
        return _FiringPartition(self.settings)


def build(settings: Settings) -> Dataflow:
    t = topics_of(settings)
    flow = Dataflow("alerts")
    msgs = op.input(
        "definitions_and_prices",
        flow,
        raw_source(
            settings,
            [t.alerts, t.trades, t.quotes],
            config={"isolation.level": "read_committed"},
        ),
    )
    work = op.flat_map_batch(
        "key_by_symbol", msgs, lambda batch: key_by_symbol(batch, t.alerts, t.quotes)
    )
    evaluated = op.stateful_map("evaluate", work, evaluate)
    fired = op.filter_map_value("fired", evaluated, lambda f: f or None)
    op.output("record", op.key_rm("unkeyed", fired), FiringSink(settings))
    return flow


flow = build(get_settings())
