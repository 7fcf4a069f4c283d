"""The outbox relay: committed `outbox` rows to Kafka, exactly once in effect.

infra/ledger.py writes an outbox row in the same PostgreSQL transaction as the order
change it announces, and NOTIFYs `tapeflow_outbox`. This relay moves those rows to
their topic (oms.orders), whatever process is killed at whatever moment:

- One active relay per topic set (so per database and namespace): it holds a session
  advisory lock on a dedicated connection, which also LISTENs. A second relay waits
  for the lock and takes over when the first one's connection drops (a killed process
  closes its socket, so that is immediate).
- A transactional Kafka producer whose transactional.id is fixed per namespace
  (idempotent, acks=all). Starting it (init_transactions) fences any earlier instance
  and aborts the transaction it left open, so a zombie can never commit later.
- Each batch (unsent rows in id order) is produced in one Kafka transaction; only once
  it is committed are the rows marked sent, in one PostgreSQL transaction that also
  advances `outbox_progress` (per partition: the offset after the batch's last record).
- A crash between the Kafka commit and the PostgreSQL mark leaves rows that are in
  Kafka but still unsent. So on start, after fencing, the relay reads the topic with
  isolation.level=read_committed from `outbox_progress` (or the beginning) to its end,
  and marks every outbox id it finds there (header `outbox-id`) as sent before sending
  anything. Records of aborted transactions are invisible to it and to every
  read_committed consumer, so those rows are simply sent again.
Each record's value is the row's payload with `"event_id": "o:<outbox id>"` spliced in
first (schemas/oms.py), its key the row's key (the symbol).

Entry points: `run_relay(settings, stop)` (blocks until `stop` is set), `tapeflow relay`
and `python -m infra.outbox`. The alerts topic (price alert definitions, infra/alerts.py)
goes through the same outbox table with a relay of its own (`topic=`, its own lock and
transactional id); `run_relays` runs one per topic, as `tapeflow run` and `relay` do.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from infra.ledger import OUTBOX_CHANNEL
from infra.settings import Settings
from infra.topics import ensure_topics, topics_of

log = logging.getLogger("tapeflow.outbox")

BATCH = 2000  # rows per Kafka transaction at most
POLL_S = 0.2  # look for rows at least this often even without a NOTIFY
LINGER_S = 0.01  # after a pass that found rows, wait this long before the next one
LOCK_RETRY_S = 0.2  # a waiting relay tries the advisory lock this often
LIVENESS_S = 1.0  # check the lock connection at least this often under load
REPORT_S = 60.0  # log what was relayed at most this often
TXN_TIMEOUT_MS = 10_000  # an open transaction of a dead relay blocks read_committed readers
KAFKA_TIMEOUT_S = 30.0
HEADER = "outbox-id"

Row = tuple[int, str, bytes]  # id, key, payload


def lock_key(topics: Sequence[str]) -> int:
    """The advisory lock (a signed 64-bit key) that one relay of these topics holds."""
    digest = hashlib.blake2b(
        "\0".join(["tapeflow-outbox", *sorted(topics)]).encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def transactional_id(namespace: str, stream: str | None = None) -> str:
    """Fixed per namespace (and topic, for topics besides oms.orders): every relay
    incarnation fences the one before."""
    base = f"tapeflow-outbox-relay:{namespace}"
    return base if stream is None else f"{base}:{stream}"


def with_event_id(outbox_id: int, payload: bytes) -> bytes:
    """`{"kind": ...}` -> `{"event_id":"o:<id>","kind": ...}` without re-encoding."""
    if payload[:1] != b"{" or payload[1:2] == b"}":
        raise ValueError(f"outbox row {outbox_id}: payload is not a non-empty JSON object")
    return b'{"event_id":"o:%d",%s' % (outbox_id, payload[1:])


class Fenced(Exception):
    """The relay lost its lock or its producer: stop publishing, start a new session."""


class _Abortable(Exception):
    """The Kafka transaction was aborted; the batch can be sent again."""


@dataclass(slots=True)
class RelayStats:
    sessions: int = 0  # times this relay became the active one
    batches: int = 0
    sent: int = 0  # rows marked sent after their Kafka transaction committed
    recovered: int = 0  # rows found already in Kafka at session start and marked sent
    active: bool = False
    last_batch_ms: float = 0.0
    errors: list[str] = field(default_factory=list)


class OutboxRelay:
    """Relays the outbox rows of `settings.namespace`'s oms.orders topic (or of `topic`,
    e.g. the alerts topic: a relay of its own, with its own lock and transactional id)."""

    def __init__(
        self,
        settings: Settings,
        *,
        topic: str | None = None,
        batch: int = BATCH,
        poll_s: float = POLL_S,
        linger_s: float = LINGER_S,
        name: str = "relay",
    ) -> None:
        self.settings = settings
        orders = topics_of(settings).orders
        self.topic = topic or orders
        self.topics = [self.topic]
        self.batch = batch
        self.poll_s = poll_s
        self.linger_s = linger_s
        self.name = name
        self.key = lock_key(self.topics)
        self.txn_id = transactional_id(
            settings.namespace,
            None if self.topic == orders else self.topic.removeprefix(settings.namespace),
        )
        self.stats = RelayStats()
        self._select = (
            "SELECT id, key, payload FROM outbox WHERE sent_at IS NULL AND topic = %s "
            "ORDER BY id LIMIT %s"
        )

    # -- the loop ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Relay until `stop` is set; a failed session (lost lock or connection, fenced
        producer, broker or database down) is logged and started again."""
        backoff = 0.2
        while not stop.is_set():
            started = time.monotonic()
            try:
                self._session(stop)
            except Exception as exc:  # every failure restarts the session
                self.stats.errors.append(repr(exc))
                del self.stats.errors[:-20]
                log.warning("%s: session ended: %r; restarting", self.name, exc)
            finally:
                self.stats.active = False
            if time.monotonic() - started > 10:
                backoff = 0.2
            stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(
            self.settings.postgres,
            autocommit=True,
            connect_timeout=10,
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
            application_name=f"tapeflow-outbox-{self.name}",
        )

    def _session(self, stop: threading.Event) -> None:
        with self._connect() as listen:
            if not self._acquire(listen, stop):
                return
            listen.execute(f"LISTEN {OUTBOX_CHANNEL}")
            ensure_topics(self.settings, self.topics)
            producer = Producer(self._producer_config())
            try:
                t0 = time.perf_counter()
                producer.init_transactions(KAFKA_TIMEOUT_S)  # fences the previous relay
                log.info(
                    "%s: producer %s initialized in %.0f ms",
                    self.name,
                    self.txn_id,
                    (time.perf_counter() - t0) * 1000,
                )
                with self._connect() as work:
                    # The marks need no fsync of their own: a crash of PostgreSQL that
                    # loses the last ones also drops this session, and the next one's
                    # recovery read finds those rows in Kafka and marks them again.
                    work.execute("SET synchronous_commit = off")
                    self._recover(work)
                    self.stats.sessions += 1
                    self.stats.active = True
                    log.info("%s: active for %s (%s)", self.name, self.topic, self.txn_id)
                    self._loop(listen, work, producer, stop)
            finally:
                producer.close()

    def _acquire(self, listen: psycopg.Connection, stop: threading.Event) -> bool:
        waiting = False
        while not stop.is_set():
            row = listen.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
            if row and row[0]:
                return True
            if not waiting:
                log.info("%s: another relay holds %s; waiting", self.name, self.topic)
                waiting = True
            stop.wait(LOCK_RETRY_S)
        return False

    def _producer_config(self) -> dict[str, str | int | bool]:
        return {
            "bootstrap.servers": self.settings.bootstrap,
            "transactional.id": self.txn_id,
            "enable.idempotence": True,  # implied by transactions; stated for the reader
            "acks": "all",
            "linger.ms": 0,
            "transaction.timeout.ms": TXN_TIMEOUT_MS,
            "message.timeout.ms": TXN_TIMEOUT_MS,
            "client.id": f"tapeflow-outbox-{self.name}",
        }

    def _loop(
        self,
        listen: psycopg.Connection,
        work: psycopg.Connection,
        producer: Producer,
        stop: threading.Event,
    ) -> None:
        checked = time.monotonic()
        reported, sent_then = checked, self.stats.sent
        while not stop.is_set():
            rows = [
                (i, k, bytes(p))
                for i, k, p in work.execute(self._select, (self.topic, self.batch)).fetchall()
            ]
            if rows:
                t0 = time.perf_counter()
                offsets = self._publish(producer, rows)
                self._mark(work, [r[0] for r in rows], offsets)
                self.stats.batches += 1
                self.stats.sent += len(rows)
                self.stats.last_batch_ms = (time.perf_counter() - t0) * 1000
                log.debug("%s: %d rows in %.1f ms", self.name, len(rows), self.stats.last_batch_ms)
            now = time.monotonic()
            if now - reported > REPORT_S and self.stats.sent != sent_then:
                log.info(
                    "%s: %d rows relayed in the last %.0f s (%d in total, %d transactions)",
                    self.name,
                    self.stats.sent - sent_then,
                    now - reported,
                    self.stats.sent,
                    self.stats.batches,
                )
                reported, sent_then = now, self.stats.sent
            if now - checked > LIVENESS_S:
                listen.execute("SELECT 1")  # raises if the lock's session is gone
                checked = now
            if len(rows) == self.batch:
                continue  # more waiting: notifications can be drained on the next pass
            if rows and self.linger_s:
                # Under load, let commits gather for a few ms so that one Kafka transaction
                # carries them: each pass costs the relay, the broker and PostgreSQL ~ms
                # of CPU whatever its size. An idle relay still wakes on the first NOTIFY.
                stop.wait(self.linger_s)
                for _ in listen.notifies(timeout=0):  # covered by the next pass
                    pass
                continue
            # Wake on the first NOTIFY (a committed outbox row) or after poll_s; a dropped
            # lock connection raises here, which ends the session.
            for _ in listen.notifies(timeout=self.poll_s, stop_after=1):
                pass
            for _ in listen.notifies(timeout=0):  # the rest of a burst: one pass covers it
                pass
            checked = time.monotonic()

    # -- one batch --------------------------------------------------------------------

    def _publish(self, producer: Producer, rows: list[Row]) -> dict[int, int]:
        """Rows in one Kafka transaction; the next offset per partition once committed.
        An aborted transaction is retried; anything fatal raises Fenced."""
        for attempt in range(5):
            try:
                return self._transaction(producer, rows)
            except _Abortable as exc:
                log.warning("%s: transaction aborted (%s); sending the batch again", self.name, exc)
                time.sleep(0.05 * (attempt + 1))
        raise Fenced("five aborted transactions in a row")

    def _transaction(self, producer: Producer, rows: list[Row]) -> dict[int, int]:
        offsets: dict[int, int] = {}
        failed: list[KafkaError] = []
        delivered = 0

        def report(err: KafkaError | None, msg) -> None:
            nonlocal delivered
            if err is not None:
                failed.append(err)
                return
            delivered += 1
            p, nxt = msg.partition(), msg.offset() + 1
            if nxt > offsets.get(p, 0):
                offsets[p] = nxt

        topic, produce = self.topic, producer.produce
        try:
            producer.begin_transaction()
            for oid, key, payload in rows:
                value = with_event_id(oid, payload)
                headers = [(HEADER, b"%d" % oid)]
                while True:
                    try:
                        produce(topic, value, key.encode(), on_delivery=report, headers=headers)
                        break
                    except BufferError:  # local queue full: let deliveries drain
                        producer.poll(0.01)
            self._commit(producer)
        except KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.txn_requires_abort():
                try:
                    producer.abort_transaction(KAFKA_TIMEOUT_S)
                except KafkaException as again:
                    raise Fenced(f"abort failed: {again}") from exc
                raise _Abortable(str(err)) from exc
            raise Fenced(str(exc)) from exc
        if failed or delivered != len(rows):
            # The commit succeeded, so every record was delivered; anything else is a bug.
            raise Fenced(f"committed, yet {len(failed)} failed and {delivered} delivered")
        return offsets

    @staticmethod
    def _commit(producer: Producer) -> None:
        for _ in range(10):
            try:
                producer.commit_transaction(KAFKA_TIMEOUT_S)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if not (isinstance(err, KafkaError) and err.retriable()):
                    raise
                log.warning("commit_transaction: %s; retrying", err)
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "commit_transaction kept failing"))

    def _mark(self, work: psycopg.Connection, ids: list[int], offsets: dict[int, int]) -> None:
        """Rows sent and progress advanced, in one PostgreSQL transaction."""
        parts = sorted(offsets)
        with work.transaction():
            work.execute(
                "UPDATE outbox SET sent_at = now() WHERE id = ANY(%s) AND sent_at IS NULL",
                (ids,),
            )
            if parts:
                work.execute(
                    "INSERT INTO outbox_progress (topic, partition, next_offset) "
                    "SELECT %s, p, o FROM unnest(%s::int[], %s::bigint[]) AS t(p, o) "
                    "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = "
                    "GREATEST(outbox_progress.next_offset, EXCLUDED.next_offset)",
                    (self.topic, parts, [offsets[p] for p in parts]),
                )

    # -- start-up ---------------------------------------------------------------------

    def _recover(self, work: psycopg.Connection) -> None:
        """Mark as sent every row whose record is already in Kafka (committed).

        Runs after init_transactions, so no transaction of an earlier relay is still
        open: the topic's end is final for records written by relays."""
        t0 = time.perf_counter()
        progress = dict(
            work.execute(
                "SELECT partition, next_offset FROM outbox_progress WHERE topic = %s",
                (self.topic,),
            ).fetchall()
        )
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap,
                "group.id": f"{self.txn_id}:recovery",  # never joined nor committed
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            }
        )
        ids: list[int] = []
        ends: dict[int, int] = {}
        try:
            meta = consumer.list_topics(self.topic, timeout=KAFKA_TIMEOUT_S).topics[self.topic]
            if meta.error is not None:
                raise Fenced(f"topic {self.topic}: {meta.error}")
            assign = []
            for p in sorted(meta.partitions):
                start = progress.get(p, OFFSET_BEGINNING)
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=KAFKA_TIMEOUT_S
                )
                if start == OFFSET_BEGINNING and low == high:
                    ends[p] = high  # no record to read
                    continue
                if start != OFFSET_BEGINNING and start >= high:
                    continue
                assign.append(TopicPartition(self.topic, p, start))
            pending = {tp.partition for tp in assign}
            if assign:
                consumer.assign(assign)
            deadline = time.monotonic() + 120
            while pending:
                if time.monotonic() > deadline:
                    raise Fenced(f"recovery read of {self.topic} did not reach the end")
                for msg in consumer.consume(5000, 0.02):  # returns at 5000 or 20 ms
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            ends[msg.partition()] = msg.offset()
                            pending.discard(msg.partition())
                            continue
                        raise Fenced(f"recovery read of {self.topic}: {err}")
                    for name, value in msg.headers() or ():
                        if name == HEADER:
                            ids.append(int(value))
        finally:
            consumer.close()
        marked = 0
        with work.transaction():
            if ids:
                cur = work.execute(
                    "UPDATE outbox SET sent_at = now() WHERE id = ANY(%s) AND sent_at IS NULL "
                    "AND topic = %s",
                    (ids, self.topic),
                )
                marked = cur.rowcount
            for p, end in ends.items():
                work.execute(
                    "INSERT INTO outbox_progress (topic, partition, next_offset) "
                    "VALUES (%s, %s, %s) ON CONFLICT (topic, partition) DO UPDATE SET "
                    "next_offset = GREATEST(outbox_progress.next_offset, EXCLUDED.next_offset)",
                    (self.topic, p, end),
                )
        self.stats.recovered += marked
        log.info(
            "%s: recovery read %d records of %s in %.0f ms; %d unsent rows were already there",
            self.name,
            len(ids),
            self.topic,
            (time.perf_counter() - t0) * 1000,
            marked,
        )


def run_relay(settings: Settings, stop: threading.Event, **options) -> OutboxRelay:
    """Relay the namespace's outbox until `stop` is set (blocking); returns the relay."""
    relay = OutboxRelay(settings, **options)
    relay.run(stop)
    return relay


def relayed_topics(settings: Settings) -> list[str]:
    """Every topic written through the outbox: orders, and alert definitions."""
    t = topics_of(settings)
    return [t.orders, t.alerts]


def run_relays(settings: Settings, stop: threading.Event) -> list[OutboxRelay]:
    """One relay per relayed topic, each in a thread, until `stop` is set (blocking)."""
    orders, *others = relayed_topics(settings)
    relays = [OutboxRelay(settings, topic=orders)]
    relays += [OutboxRelay(settings, topic=t, name=f"relay-{t.rsplit('.', 2)[-2]}") for t in others]
    threads = [
        threading.Thread(target=r.run, args=(stop,), name=r.name, daemon=True) for r in relays
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return relays


def main() -> None:
    """Foreground relay; SIGINT or SIGTERM stops it after the batch in flight."""
    from infra.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    for relay in run_relays(get_settings(), stop):
        log.info(
            "%s stopped: %d rows sent, %d recovered",
            relay.name,
            relay.stats.sent,
            relay.stats.recovered,
        )


if __name__ == "__main__":
    main()
