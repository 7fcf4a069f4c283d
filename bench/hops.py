"""Where an order's time went, hop by hop (bench.fills --hops).

Joins, by order id, the load client's wall times (the API's 200 read, the first fill
event parsed from the WebSocket) with the pipeline's own stamps: PostgreSQL's
`orders.created_at` (the placement transaction's start), the broker's timestamps of the
order on oms.orders (the relay's produce) and of its first fill on oms.executions (the
execution flow's produce), and `executions.recorded_at` (the ledger transaction's start).
Every clock is this machine's, so the differences are comparable; `now()` in PostgreSQL
is the transaction's start, so a lock wait inside a transaction counts in the hop after it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from infra.topics import partitions_of
from schemas.oms import decode

HOPS = (
    ("placement", "created", "ack"),  # transaction start -> the client read the 200
    ("relay", "ack", "on_orders"),  # -> on oms.orders
    ("execution", "on_orders", "on_executions"),  # -> its first fill on oms.executions
    ("to ledger", "on_executions", "recorded"),  # -> the ledger transaction that applied it
    ("ledger+stream", "recorded", "fill"),  # -> the fill event parsed from the WebSocket
)


@dataclass
class Stamps:
    ack: int = 0
    fill: int = 0
    created: int = 0
    on_orders: int = 0
    on_executions: int = 0
    recorded: int = 0


def _topic_stamps(bootstrap: str, topic: str, kind: str | None) -> dict[str, int]:
    """order id -> broker timestamp (ns) of its first message on the topic (of `kind`)."""
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench-hops", "enable.auto.commit": False}
    )
    out: dict[str, int] = {}
    try:
        parts = partitions_of(bootstrap, topic)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] for p in parts}
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        # Positions, not the last message's offset: transactional producers end a
        # partition with a commit marker that is never delivered.
        while (
            any(
                tp.offset < ends[tp.partition]
                for tp in c.position(c.assignment())
                if tp.offset >= 0
            )
            or not out
        ):
            msgs = c.consume(10_000, timeout=2.0)
            if not msgs:
                break
            for m in msgs:
                if m.error():
                    continue
                event = decode(m.value())
                if kind is not None and event.get("kind") != kind:
                    continue
                oid = str(event.get("order_id") or event.get("order", {}).get("id"))
                out.setdefault(oid, m.timestamp()[1] * 1_000_000)
    finally:
        c.close()
    return out


def collect(
    bootstrap: str, orders_topic: str, executions_topic: str, pool, rows: Iterable[list[str]]
) -> dict[str, Stamps]:
    """rows: the load's `id ack_ns fill_ns status` lines of acknowledged orders."""
    stamps = {r[0]: Stamps(ack=int(r[1]), fill=int(r[2])) for r in rows}
    for oid, ns in _topic_stamps(bootstrap, orders_topic, None).items():
        if oid in stamps:
            stamps[oid].on_orders = ns
    for oid, ns in _topic_stamps(bootstrap, executions_topic, "fill").items():
        if oid in stamps:
            stamps[oid].on_executions = ns
    ids = list(stamps)
    with pool.connection() as conn:
        for oid, created in conn.execute(
            "SELECT id::text, (extract(epoch from created_at) * 1e9)::bigint"
            " FROM orders WHERE id = ANY(%s::uuid[])",
            (ids,),
        ):
            stamps[oid].created = created
        for oid, recorded in conn.execute(
            "SELECT order_id::text, (extract(epoch from min(recorded_at)) * 1e9)::bigint"
            " FROM executions WHERE order_id = ANY(%s::uuid[]) GROUP BY order_id",
            (ids,),
        ):
            stamps[oid].recorded = recorded
    return stamps


def table(stamps: dict[str, Stamps]) -> list[str]:
    """p50 / p90 / p99 / max ms of each hop over the orders that have both ends."""
    lines = [f"    {'hop':<14} {'orders':>7} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}"]
    for name, a, b in HOPS:
        ms = np.array(
            [
                (getattr(s, b) - getattr(s, a)) / 1e6
                for s in stamps.values()
                if getattr(s, a) and getattr(s, b)
            ]
        )
        if not len(ms):
            lines.append(f"    {name:<14} {0:>7}")
            continue
        p50, p90, p99, top = np.percentile(ms, [50, 90, 99, 100])
        lines.append(
            f"    {name:<14} {len(ms):>7,} {p50:>8.1f} {p90:>8.1f} {p99:>8.1f} {top:>8.1f}"
        )
    return lines
