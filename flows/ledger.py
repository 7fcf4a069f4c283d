"""ledger: the execution side's answers applied to the ledger of record (PostgreSQL).

    oms.executions ─ decode ─► apply (Ledger.apply per event, in order)

Ledger.apply records each event id once, in the transaction that applies it, so at-least-
once delivery is enough: after a crash the flow resumes from the offsets of its last
recovery snapshot, and the events it applies again change nothing. Answers are keyed by
account, so one account's events arrive in order on one partition and one worker.

Events: acknowledged, rejected, canceled, cancel_rejected, replaced, replace_rejected,
expired, and fill (executions, positions, lots, cash: infra/fills.py). One the ledger
refuses (an overfill, an oversell, an illegal transition) is recorded in
ledger_anomalies and changes nothing else.

Lanes: a batch's events are dealt by account into LANES sub-batches (each account's
events stay in order, in one lane) applied at the same time, each in its own transaction
on its own connection. Lanes touch disjoint rows (orders, positions and the account row
are an account's), so they never wait for each other; one transaction at a time left
the ledger waiting on round trips (~20 statements per fill) and it fell behind at a few
hundred orders a second. write_batch returns once every lane has committed, so nothing
counts as done (recovery snapshot) before it is in the ledger.

Account events: each order event an apply writes (infra/account_events.py) is
PUBLISHed to Redis `account:{account_id}` right after its commit, for WS /v1/stream.
A failed publish is logged and skipped: the events are in PostgreSQL, which the stream
reads when it sees a hole in an account's sequence or a client reconnects with `since`.

Run: python -m bytewax.run flows.ledger:flow -r .tapeflow/recovery/ledger -s 2
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any
from zlib import crc32

import bytewax.operators as op
import psycopg
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.common import raw_source
from flows.kafka_io import RawMessage
from infra import account_events
from infra.settings import Settings, get_settings
from infra.topics import Topics, topics_of
from schemas.oms import decode

log = logging.getLogger("tapeflow.ledger")

Event = dict[str, Any]
REQUIRED = ("event_id", "kind", "at", "order_id")
# Events per ledger transaction: its events are published (and streamed) only after
# its commit, so a long one holds back its first events; a commit costs ~1 ms.
MAX_TRANSACTION = 100
LANES = 4  # account-disjoint sub-batches applied concurrently
RETRIES = 5
# Errors that say the event itself can never apply (no such order, malformed fields), as
# opposed to the database being unreachable, which must stop the flow so it retries.
UNAPPLIABLE = (
    psycopg.errors.IntegrityError,
    psycopg.errors.DataError,
    KeyError,
    TypeError,
    ValueError,
)


def decode_batch(msgs: list[RawMessage]) -> list[list[Event]]:
    """One item per Kafka batch: its readable events, in order."""
    events = []
    for _, _, value in msgs:
        try:
            event = decode(value)
            missing = [k for k in REQUIRED if k not in event]
        except Exception as exc:
            log.error("unreadable oms.executions message %r: %s", value[:200], exc)
            continue
        if missing:
            log.error("oms.executions message without %s: %r", ", ".join(missing), value[:200])
            continue
        events.append(event)
    return [events] if events else []


class _LedgerPartition(StatelessSinkPartition[list[Event]]):
    def __init__(self, settings: Settings, topics: Topics) -> None:
        import redis

        # What the first batch would import (the order model alone takes ~0.2 s), and
        # (below) a connection per lane: paid at start, not by the first fills after it.
        import api.models  # noqa: F401
        import infra.ledger_batch  # noqa: F401
        from infra import db
        from infra.ledger import Ledger

        pool = db.pool(settings.postgres)
        db.keep_open(pool, LANES)
        self.ledger = Ledger(pool, topics)
        self.redis = redis.Redis.from_url(
            settings.redis, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        self._quiet_until = 0.0  # after a failed publish, skip publishing for a while
        self._lanes = ThreadPoolExecutor(LANES, thread_name_prefix="ledger-lane")

    def write_batch(self, items: list[list[Event]]) -> None:
        lanes = _lanes([e for batch in items for e in batch])
        if len(lanes) == 1:
            self._apply_lane(lanes[0])
            return
        done, _ = wait([self._lanes.submit(self._apply_lane, lane) for lane in lanes])
        for future in done:
            future.result()  # a failed lane stops the flow (after the others committed)

    def _apply_lane(self, events: list[Event]) -> None:
        for start in range(0, len(events), MAX_TRANSACTION):
            self.apply_many(events[start : start + MAX_TRANSACTION])

    def apply_many(self, events: list[Event]) -> None:
        """A batch in one transaction (one commit for all: the ledger's group commit);
        when one event can never apply, the batch goes again one event at a time, so
        that event is skipped alone."""
        for attempt in range(RETRIES):
            try:
                results = self.ledger.apply_batch(events)
                break
            except UNAPPLIABLE:
                for event in events:
                    self.apply(event)
                return
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
                if attempt == RETRIES - 1:
                    raise
                log.info("a batch of %d events: %s; retrying", len(events), exc)
                time.sleep(0.005 * (attempt + 1))
        written = []
        for result in results:
            if result.outcome == "anomaly":
                log.warning("execution event %s is an anomaly: %s", result.event_id, result.reason)
            written += result.events
        self._publish(written)

    def _publish(self, written: list) -> None:
        live = bool(written) and time.monotonic() >= self._quiet_until
        if live and not account_events.publish(self.redis, written):
            self._quiet_until = time.monotonic() + 1.0  # the log has them meanwhile

    def apply(self, event: Event) -> None:
        for attempt in range(RETRIES):
            try:
                result = self.ledger.apply(event)
                break
            except UNAPPLIABLE as exc:
                log.error("execution event %s cannot apply: %s", event.get("event_id"), exc)
                return
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
                # A deadlock with an order placement (both lock an account and its
                # positions): nothing was applied; apply is idempotent, so try again.
                if attempt == RETRIES - 1:
                    raise
                log.info("execution event %s: %s; retrying", event.get("event_id"), exc)
                time.sleep(0.005 * (attempt + 1))
        if result.outcome == "anomaly":
            log.warning("execution event %s is an anomaly: %s", result.event_id, result.reason)
        self._publish(list(result.events))

    def close(self) -> None:
        self._lanes.shutdown()
        self.redis.close()


def _lanes(events: list[Event]) -> list[list[Event]]:
    """The events dealt by account into at most LANES lists, each in arrival order."""
    lanes: dict[int, list[Event]] = {}
    for event in events:
        lane = crc32(str(event.get("account_id", "")).encode()) % LANES
        lanes.setdefault(lane, []).append(event)
    return list(lanes.values())


class LedgerSink(DynamicSink[list[Event]]):
    """Applies on the worker that read the events, so each partition's order is kept."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LedgerPartition:
        return _LedgerPartition(self.settings, topics_of(self.settings))


def build(settings: Settings) -> Dataflow:
    t = topics_of(settings)
    flow = Dataflow("ledger")
    msgs = op.input("executions", flow, raw_source(settings, [t.executions]))
    events = op.flat_map_batch("decode", msgs, decode_batch)
    op.output("apply", events, LedgerSink(settings))
    return flow


flow = build(get_settings())
