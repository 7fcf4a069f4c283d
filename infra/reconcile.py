"""Reconciliation: the venues' execution reports against the ledger, for one New York day.

    report = reconcile(settings, date(2026, 11, 24))        # every account
    report = reconcile(settings, day, accounts=[account_id])  # only these accounts
    report.status  # "clean" | "discrepancies"; report.id: the stored report

Reads Kafka venues.executions (the reports the execution flow writes with each fill) and
PostgreSQL (executions, ledger_anomalies), compares them with the pure
schemas.reconciliation.reconcile, and stores the outcome (reconciliation_reports and
_items, migration 0007). Needs no chDB, so it runs in any process (the CLI, end of day).

Which reports belong to the day: those whose execution time is in the day; the topic is
read from the offsets Kafka gives for the day's start (offsets_for_times: the topic is
stamped with the broker's time, and a report is written after its execution) to its end
as it stands when the read begins. A day that has not begun by the wall clock (a feed
replayed ahead of the wall) is read from the topic's beginning.

Run it once the day's fills have settled (after the close, as end of day does): a fill in
flight between the venue and the ledger shows as missing_in_ledger. The ledger is read
before the venues, so an execution is never reported extra because its venue report was
written just after the read.

Rerunning for a day stores a new report; the newest for a day is the day's answer (GET
/v1/admin/reconciliation?date=), the older ones stay as its history.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition
from psycopg_pool import ConnectionPool

from infra import db
from infra.settings import Settings
from infra.topics import topics_of
from schemas import reconciliation
from schemas.reconciliation import (
    Anomaly,
    Execution,
    Item,
    day_bounds,
    execution_from_report,
    in_day,
    to_ns,
)

log = logging.getLogger("tapeflow.reconcile")

READ_TIMEOUT_S = 60.0  # without a message while the topic still has some to give
COUNTS = (
    "venue_reports",
    "ledger_executions",
    "matched",
    "missing_in_ledger",
    "extra_in_ledger",
    "mismatched",
    "conflicting_reports",
    "ledger_anomalies",
)


class ReconcileError(RuntimeError):
    """The venues' record could not be read (no topic, Kafka unreachable)."""


@dataclass(frozen=True, slots=True)
class StoredReport:
    id: UUID
    trading_day: date
    accounts: tuple[UUID, ...] | None  # the scope it was run for; None: every account
    status: str  # clean | discrepancies
    counts: dict[str, int]  # COUNTS
    started_at: datetime
    created_at: datetime
    items: tuple[Item, ...] = ()  # empty in listings

    @property
    def item_count(self) -> int:
        return sum(self.counts[k] for k in COUNTS[3:])


def reconcile(settings: Settings, day: date, *, accounts: list[UUID] | None = None) -> StoredReport:
    """Compare and store; the stored report with its items."""
    started = datetime.now(UTC)
    pool = db.pool(settings.postgres)
    scope = {str(a) for a in accounts} if accounts is not None else None
    ledger = ledger_executions(pool, day, accounts)
    anomalies = ledger_anomalies(pool, day, accounts)
    reports = venue_reports(settings, day, scope)
    report = reconciliation.reconcile(day, reports, ledger, anomalies)
    counts = report.counts()
    with pool.connection() as conn, conn.transaction():
        row = conn.execute(
            "INSERT INTO reconciliation_reports (trading_day, accounts, status, "
            f"{', '.join(COUNTS)}, started_at) VALUES (%s, %s, %s, "
            f"{', '.join(['%s'] * len(COUNTS))}, %s) RETURNING id, created_at",
            (day, accounts, report.status, *(counts[k] for k in COUNTS), started),
        ).fetchone()
        assert row is not None
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO reconciliation_items (report_id, seq, kind, execution_id, "
                "order_id, account_id, symbol, fields, venue, ledger, detail) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        row[0],
                        seq,
                        i.kind,
                        i.execution_id,
                        i.order_id,
                        i.account_id,
                        i.symbol,
                        orjson.dumps(list(i.fields)).decode(),
                        _json(i.venue),
                        _json(i.ledger),
                        i.detail,
                    )
                    for seq, i in enumerate(report.items, 1)
                ],
            )
    return StoredReport(
        row[0],
        day,
        tuple(accounts) if accounts is not None else None,
        report.status,
        counts,
        started,
        row[1],
        report.items,
    )


def _json(value: dict[str, Any] | None) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


# -- the two records -------------------------------------------------------------------


def ledger_executions(
    pool: ConnectionPool, day: date, accounts: list[UUID] | None = None
) -> list[Execution]:
    start, end = day_bounds(day)
    sql = (
        "SELECT id, order_id::text, account_id::text, symbol, side, qty, price, venue, "
        "executed_at FROM executions WHERE executed_at >= %s AND executed_at < %s"
    )
    params: list[Any] = [start, end]
    if accounts is not None:
        sql += " AND account_id = ANY(%s)"
        params.append(list(accounts))
    with pool.connection() as conn:
        rows = conn.execute(sql + " ORDER BY id", params).fetchall()
    return [Execution(*r) for r in rows]


def ledger_anomalies(
    pool: ConnectionPool, day: date, accounts: list[UUID] | None = None
) -> list[Anomaly]:
    """The anomalies of answers stamped in the day (the event's own `at`, as executions
    are by their execution time, so a replayed day finds its own)."""
    start, end = day_bounds(day)
    # CASE, not AND: PostgreSQL may evaluate the cast before a guard beside it.
    at = "(CASE WHEN a.payload->>'at' ~ '^[0-9]{1,20}$' THEN (a.payload->>'at')::numeric END)"
    sql = (
        "SELECT a.event_id, a.order_id::text, "
        "COALESCE(o.account_id::text, a.payload->>'account_id'), "
        "COALESCE(o.symbol, a.payload->>'symbol'), a.kind, a.reason, a.payload "
        "FROM ledger_anomalies a LEFT JOIN orders o ON o.id = a.order_id "
        f"WHERE {at} >= %s AND {at} < %s"
    )
    params: list[Any] = [to_ns(start), to_ns(end)]
    if accounts is not None:
        sql += " AND COALESCE(o.account_id::text, a.payload->>'account_id') = ANY(%s)"
        params.append([str(a) for a in accounts])
    with pool.connection() as conn:
        rows = conn.execute(sql + " ORDER BY a.event_id", params).fetchall()
    return [Anomaly(*r) for r in rows]


def venue_reports(
    settings: Settings, day: date, accounts: set[str] | None = None
) -> list[Execution]:
    """The day's reports in the order each partition holds them (repeats included)."""
    topic = topics_of(settings).venue_reports
    start, _ = day_bounds(day)
    since_ms = int(start.timestamp() * 1000) if start <= datetime.now(UTC) else 0
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap,
            "group.id": "tapeflow-reconcile",  # never committed: offsets are assigned
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        ends = _assign_from(consumer, topic, since_ms)
        out: list[Execution] = []
        quiet_since = time.monotonic()
        while ends:
            msgs = consumer.consume(1000, 1.0)
            if not msgs and time.monotonic() - quiet_since > READ_TIMEOUT_S:
                raise ReconcileError(f"{topic}: no message for {READ_TIMEOUT_S:.0f} s")
            for m in msgs:
                quiet_since = time.monotonic()
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        ends.pop(m.partition(), None)
                        continue
                    raise ReconcileError(f"{topic}: {err}")
                end = ends.get(m.partition())
                if end is None or m.offset() >= end:
                    continue  # written after the read began
                if m.offset() >= end - 1:
                    ends.pop(m.partition())
                report = _report(m.value())
                if report is None or not in_day(report.executed_at, day):
                    continue
                if accounts is None or report.account_id in accounts:
                    out.append(report)
        return out
    finally:
        consumer.close()


def _assign_from(consumer: Consumer, topic: str, since_ms: int) -> dict[int, int]:
    """Assign every partition from its first offset at or after `since_ms`; the end offset
    of each partition that has anything to read from there."""
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
    except Exception as exc:
        raise ReconcileError(f"Kafka unreachable: {exc}") from exc
    if meta is None or meta.error is not None or not meta.partitions:
        raise ReconcileError(f"topic {topic} does not exist; run `tapeflow up`")
    wanted = [TopicPartition(topic, p, since_ms) for p in sorted(meta.partitions)]
    found = consumer.offsets_for_times(wanted, timeout=10)
    ends: dict[int, int] = {}
    assign = []
    for tp in found:
        if tp.error is not None:
            raise ReconcileError(f"{topic}[{tp.partition}]: {tp.error}")
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
        offset = tp.offset if tp.offset >= 0 else high  # -1: nothing that recent
        if offset < high:
            ends[tp.partition] = high
            assign.append(TopicPartition(topic, tp.partition, offset))
    consumer.assign(assign)
    return ends


def _report(value: bytes | None) -> Execution | None:
    try:
        return execution_from_report(orjson.loads(value or b""))
    except (orjson.JSONDecodeError, ValueError) as exc:
        log.error("unreadable venue report %r: %s", (value or b"")[:200], exc)
        return None


# -- stored reports --------------------------------------------------------------------

_REPORT = f"id, trading_day, accounts, status, {', '.join(COUNTS)}, started_at, created_at"


def _stored(row: tuple, items: tuple[Item, ...] = ()) -> StoredReport:
    n = len(COUNTS)
    accounts = tuple(row[2]) if row[2] is not None else None
    counts = dict(zip(COUNTS, row[4 : 4 + n], strict=True))
    return StoredReport(row[0], row[1], accounts, row[3], counts, row[4 + n], row[5 + n], items)


def get_report(
    pool: ConnectionPool, report_id: UUID, item_limit: int = 1000
) -> StoredReport | None:
    with pool.connection() as conn:
        row = conn.execute(
            f"SELECT {_REPORT} FROM reconciliation_reports WHERE id = %s", (report_id,)
        ).fetchone()
        if row is None:
            return None
        rows = conn.execute(
            "SELECT kind, detail, execution_id, order_id, account_id, symbol, fields, venue, "
            "ledger FROM reconciliation_items WHERE report_id = %s ORDER BY seq LIMIT %s",
            (report_id, item_limit),
        ).fetchall()
    items = tuple(Item(*r[:6], tuple(r[6]), r[7], r[8]) for r in rows)
    return _stored(row, items)


def latest_report(
    pool: ConnectionPool, day: date | None = None, item_limit: int = 1000
) -> StoredReport | None:
    """The newest report of the day (of any day without one), with its items."""
    where, params = ("WHERE trading_day = %s", [day]) if day is not None else ("", [])
    with pool.connection() as conn:
        row = conn.execute(
            f"SELECT id FROM reconciliation_reports {where} "
            "ORDER BY created_at DESC, id DESC LIMIT 1",
            params,
        ).fetchone()
    return get_report(pool, row[0], item_limit) if row else None


def list_reports(
    pool: ConnectionPool,
    *,
    day: date | None = None,
    start: date | None = None,
    end: date | None = None,
    limit: int = 50,
) -> list[StoredReport]:
    """Reports newest first, without their items: of one day, or of days in [start, end]."""
    where, params = [], []
    if day is not None:
        where.append("trading_day = %s")
        params.append(day)
    if start is not None:
        where.append("trading_day >= %s")
        params.append(start)
    if end is not None:
        where.append("trading_day <= %s")
        params.append(end)
    sql = f"SELECT {_REPORT} FROM reconciliation_reports"
    if where:
        sql += " WHERE " + " AND ".join(where)
    params.append(limit)
    with pool.connection() as conn:
        rows = conn.execute(sql + " ORDER BY created_at DESC, id DESC LIMIT %s", params).fetchall()
    return [_stored(r) for r in rows]
