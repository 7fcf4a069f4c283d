"""The outbox relay on the real PostgreSQL and Kafka, one topic namespace per test.

Rows written by Ledger.place reach oms.orders once each, in id order per key, with
their event ids; of two relays only the lock holder publishes; a relay SIGKILLed
after its Kafka commit but before marking the rows sent (or with its transaction
still open) leaves no duplicate once a new relay has started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from infra import accounts, db
from infra.ledger import Ledger
from infra.outbox import HEADER, OutboxRelay, lock_key, transactional_id, with_event_id
from infra.settings import Settings
from infra.topics import ensure_topics, topics_of
from schemas.oms import decode
from schemas.order_states import OrderStatus
from schemas.orders import OrderRequest, OrderType, Placement, Side, TimeInForce

ROOT = Path(__file__).resolve().parent.parent
SYMBOLS = ("AAPL", "MSFT", "NVDA", "TSLA", "AMZN")


# -- helpers (tests/test_outbox_crash.py uses them too) -----------------------------------


def isolated(base: Settings, prefix: str = "ob") -> Settings:
    """`base` with a fresh topic namespace whose oms.orders exists."""
    settings = base.model_copy(update={"namespace": f"{prefix}{uuid.uuid4().hex[:8]}."})
    ensure_topics(settings, [topics_of(settings).orders])
    return settings


def env_of(settings: Settings) -> dict[str, str]:
    """The environment a subprocess needs to be this pipeline's process."""
    return {
        **os.environ,
        "TAPEFLOW_NAMESPACE": settings.namespace,
        "TAPEFLOW_KAFKA_PORT": str(settings.kafka_port),
        "TAPEFLOW_POSTGRES_PORT": str(settings.postgres_port),
        "TAPEFLOW_REDIS_PORT": str(settings.redis_port),
        "TAPEFLOW_REDIS_DB": str(settings.redis_db),
        "TAPEFLOW_HOME": str(settings.home),
    }


def funded_account(settings: Settings, cash: str = "10000000.00") -> UUID:
    pool = db.pool(settings.postgres)
    _, account = accounts.create_user(pool, f"ob{uuid.uuid4().hex[:12]}@test.local", "Outbox")
    Ledger(pool, topics_of(settings)).deposit(account.id, Decimal(cash))
    return account.id


def limit_buy(symbol: str, qty: str = "1", price: str = "10.00") -> tuple[OrderRequest, Placement]:
    req = OrderRequest(
        symbol, Side.BUY, OrderType.LIMIT, TimeInForce.DAY, qty=Decimal(qty),
        limit_price=Decimal(price),
    )  # fmt: skip
    cash = Decimal(qty) * Decimal(price)
    return req, Placement(OrderStatus.ACCEPTED, Decimal(price), reserve_cash=cash)


def ledger_of(settings: Settings) -> Ledger:
    return Ledger(db.pool(settings.postgres), topics_of(settings))


def outbox_rows(settings: Settings) -> list[tuple[int, str, bytes, bool]]:
    """(id, key, payload, sent) of the namespace's oms.orders rows, by id."""
    rows = db.pool(settings.postgres)
    with rows.connection() as conn:
        found = conn.execute(
            "SELECT id, key, payload, sent_at IS NOT NULL FROM outbox WHERE topic = %s ORDER BY id",
            (topics_of(settings).orders,),
        ).fetchall()
    return [(i, k, bytes(p), s) for i, k, p, s in found]


def unsent(settings: Settings) -> int:
    row = db.fetchone(
        db.pool(settings.postgres),
        "SELECT count(*) FROM outbox WHERE topic = %s AND sent_at IS NULL",
        (topics_of(settings).orders,),
    )
    return row[0] if row else 0


def wait_all_sent(settings: Settings, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while (left := unsent(settings)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == 0, f"{left} outbox rows still unsent after {timeout_s} s"


def read_topic(settings: Settings, timeout_s: float = 30) -> list[dict]:
    """Every committed record of oms.orders (read_committed) from the beginning to the
    end: dicts with partition, offset, key, outbox_id (header), value (decoded), raw."""
    topic = topics_of(settings).orders
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    out: list[dict] = []
    try:
        parts = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        pending = set(parts)
        deadline = time.monotonic() + timeout_s
        while pending:
            assert time.monotonic() < deadline, f"{topic}: no end reached on {pending}"
            for m in consumer.consume(1000, 0.5):
                if m.error():
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                    pending.discard(m.partition())
                    continue
                headers = dict(m.headers() or ())
                out.append(
                    {
                        "partition": m.partition(),
                        "offset": m.offset(),
                        "key": m.key().decode(),
                        "outbox_id": int(headers[HEADER]),
                        "value": decode(m.value()),
                        "raw": m.value(),
                    }
                )
    finally:
        consumer.close()
    return out


def assert_exactly_once(
    settings: Settings, records: list[dict] | None = None, *, sequential: set[int] | None = None
) -> list[dict]:
    """Every outbox row of the namespace is sent and in the topic exactly once, intact,
    with its event id; each order's new (or replace) message comes before any message
    about it; and per key, the rows in `sequential` (all when None: rows whose
    transactions committed one after another) are in id order.

    Rows of concurrent transactions go in the order they became visible: an id is taken
    at INSERT, so a transaction can commit after a later id was already relayed."""
    rows = outbox_rows(settings)
    records = read_topic(settings) if records is None else records
    counts = Counter(r["outbox_id"] for r in records)
    twice = {i: n for i, n in counts.items() if n > 1}
    assert not twice, f"delivered more than once: {twice}"
    by_id = {r["outbox_id"]: r for r in records}
    missing = [i for i, *_ in rows if i not in by_id]
    assert not missing, f"{len(missing)} rows never reached Kafka: {missing[:10]}"
    assert set(by_id) == {i for i, *_ in rows}, "records without an outbox row"
    assert all(sent for *_, sent in rows), "rows not marked sent"
    for oid, key, payload, _ in rows:
        rec = by_id[oid]
        assert rec["raw"] == with_event_id(oid, payload)
        assert rec["value"]["event_id"] == f"o:{oid}"
        assert rec["key"] == key
    per_key: dict[str, list[tuple[int, int]]] = {}
    for r in records:
        if sequential is None or r["outbox_id"] in sequential:
            per_key.setdefault(r["key"], []).append((r["offset"], r["outbox_id"]))
    for key, seen in per_key.items():
        ids = [i for _, i in sorted(seen)]
        assert ids == sorted(ids), f"{key}: records out of id order"
    introduced: dict[str, tuple[int, int]] = {}  # order id -> (partition, offset)
    for r in sorted(records, key=lambda r: (r["partition"], r["offset"])):
        v, at = r["value"], (r["partition"], r["offset"])
        if v["kind"] in ("cancel", "replace"):
            assert introduced.get(v["order_id"], (-1, -1))[0] == at[0], (
                f"{v['kind']} {v['event_id']} before its order's message"
            )
        if "order" in v:
            introduced[v["order"]["id"]] = at
    return records


@contextmanager
def relay_thread(settings: Settings, name: str = "relay", **options) -> Iterator[OutboxRelay]:
    relay = OutboxRelay(settings, name=name, **options)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), name=f"outbox-{name}")
    thread.start()
    try:
        yield relay
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), f"relay {name} did not stop"


def wait_for(predicate, timeout_s: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- no services ---------------------------------------------------------------------------


def test_event_id_is_spliced_in_first_without_reencoding():
    payload = b'{"kind":"new","at":1,"order":{"qty":"1.5"}}'
    out = with_event_id(42, payload)
    assert out == b'{"event_id":"o:42","kind":"new","at":1,"order":{"qty":"1.5"}}'
    assert list(decode(out)) == ["event_id", "kind", "at", "order"]
    for bad in (b"", b"{}", b"[1]"):
        with pytest.raises(ValueError):
            with_event_id(1, bad)


def test_lock_and_transactional_id_are_per_namespace():
    a, b = Settings(namespace="a."), Settings(namespace="b.")
    assert lock_key([topics_of(a).orders]) != lock_key([topics_of(b).orders])
    assert lock_key(["x", "y"]) == lock_key(["y", "x"])
    assert -(2**63) <= lock_key(["x"]) < 2**63
    assert transactional_id("a.") != transactional_id("b.")


# -- PostgreSQL and Kafka ------------------------------------------------------------------


@pytest.fixture
def ns(services: Settings) -> Settings:
    return isolated(services)


@pytest.mark.services
def test_placed_orders_reach_kafka_once_in_order(ns: Settings):
    ledger, account = ledger_of(ns), funded_account(ns)
    placed: list[UUID] = []
    with relay_thread(ns) as relay:
        wait_for(lambda: relay.stats.active, what="the relay to become active")
        for i in range(150):  # one after another: id order per key
            order = ledger.place(account, *limit_buy(SYMBOLS[i % len(SYMBOLS)]))
            placed.append(order.id)
        one_by_one = set(placed)

        # a burst from several threads too: ids then interleave across transactions
        def burst(k: int) -> None:
            for i in range(50):
                placed.append(ledger.place(account, *limit_buy(SYMBOLS[(i + k) % 5])).id)

        threads = [threading.Thread(target=burst, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        canceled = ledger.request_cancel(account, placed[0])
        assert canceled.id == placed[0]
        wait_all_sent(ns)
    sequential = {
        i for i, _, payload, _ in outbox_rows(ns)
        if decode(payload).get("order", {}).get("id") in {str(o) for o in one_by_one}
        or decode(payload)["kind"] == "cancel"
    }  # fmt: skip
    records = assert_exactly_once(ns, sequential=sequential)
    news = [r["value"] for r in records if r["value"]["kind"] == "new"]
    assert sorted(m["order"]["id"] for m in news) == sorted(str(i) for i in placed)
    assert len(news) == 350
    assert relay.stats.sent == len(records) and relay.stats.recovered == 0
    # progress: the end of every partition the relay wrote to
    ends: dict[int, int] = {}
    for r in records:
        ends[r["partition"]] = max(ends.get(r["partition"], 0), r["offset"] + 1)
    with db.pool(ns.postgres).connection() as conn:
        progress = dict(
            conn.execute(
                "SELECT partition, next_offset FROM outbox_progress WHERE topic = %s",
                (topics_of(ns).orders,),
            ).fetchall()
        )
    assert set(ends) <= set(progress)  # recovery records the end of every partition
    for p, next_offset in progress.items():  # a commit marker follows each transaction
        assert ends.get(p, 0) <= next_offset <= ends.get(p, 0) + relay.stats.batches


@pytest.mark.services
def test_two_relays_only_the_lock_holder_publishes(ns: Settings):
    ledger, account = ledger_of(ns), funded_account(ns)
    with relay_thread(ns, "first") as first:
        wait_for(lambda: first.stats.active, what="the first relay")
        with relay_thread(ns, "second") as second:
            time.sleep(0.5)  # the second one is trying the lock by now
            for i in range(100):
                ledger.place(account, *limit_buy(SYMBOLS[i % 5]))
            wait_all_sent(ns)
            assert first.stats.sent == 100
            assert second.stats.sent == 0 and not second.stats.active
            assert second.stats.sessions == 0
        # the second relay stopped without ever publishing
    assert_exactly_once(ns)
    # now the first relay is gone too; a new pair, then the active one stops
    with relay_thread(ns, "third") as third, relay_thread(ns, "fourth") as fourth:
        wait_for(lambda: third.stats.active or fourth.stats.active, what="a relay")
        active, standby = (third, fourth) if third.stats.active else (fourth, third)
        for i in range(20):
            ledger.place(account, *limit_buy(SYMBOLS[i % 5]))
        wait_all_sent(ns)
        assert standby.stats.sent == 0
    assert_exactly_once(ns)
    assert active.stats.sent == 20


@pytest.mark.services
def test_standby_takes_over_when_the_active_relay_is_killed(ns: Settings, tmp_path: Path):
    """A relay process SIGKILLed while active: the in-process standby takes the lock as
    soon as PostgreSQL sees the connection close, fences it and carries on."""
    ledger, account = ledger_of(ns), funded_account(ns)
    log = tmp_path / "relay.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "relay"],
            cwd=ROOT, env=env_of(ns), stdout=out, stderr=out, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        wait_for(lambda: b"active for" in log.read_bytes(), 30, "the relay process")
        with relay_thread(ns, "standby") as standby:
            for i in range(50):
                ledger.place(account, *limit_buy(SYMBOLS[i % 5]))
            wait_all_sent(ns)
            assert standby.stats.sent == 0
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            t0 = time.monotonic()
            wait_for(lambda: standby.stats.active, 10, "the standby to take over")
            took_over = time.monotonic() - t0
            for i in range(50):
                ledger.place(account, *limit_buy(SYMBOLS[i % 5]))
            wait_all_sent(ns)
            assert standby.stats.sent == 50
        assert took_over < 10, f"take-over took {took_over:.1f} s"
        assert_exactly_once(ns)
    finally:
        if proc.poll() is None:
            proc.kill()


CRASHING_RELAY = """
import logging, os, signal, sys, threading
from infra.outbox import OutboxRelay
from infra.settings import Settings

class Crashing(OutboxRelay):
    def {method}(self, *args):
        if "{method}" == "_mark":
            print("committed; dying before the mark", flush=True)
        else:
            print("produced; dying with the transaction open", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

logging.basicConfig(level=logging.INFO)
Crashing(Settings(), batch={batch}).run(threading.Event())
"""


@pytest.mark.services
@pytest.mark.parametrize("moment", ["_mark", "_commit"])
def test_relay_killed_mid_batch_does_not_duplicate(ns: Settings, tmp_path: Path, moment: str):
    """SIGKILL between the Kafka commit and the PostgreSQL mark (`_mark`), or between
    produce and commit (`_commit`); then a restarted `tapeflow relay` catches up."""
    ledger, account = ledger_of(ns), funded_account(ns)
    for i in range(120):
        ledger.place(account, *limit_buy(SYMBOLS[i % 5]))
    log = tmp_path / "crash.log"
    script = CRASHING_RELAY.format(method=moment, batch=50)
    with open(log, "ab") as out:
        proc = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env_of(ns), stdout=out, stderr=out,
            timeout=60,
        )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    assert unsent(ns) == 120  # the first batch died before its mark
    in_kafka = read_topic(ns)
    assert len(in_kafka) == (50 if moment == "_mark" else 0)

    with open(log, "ab") as out:
        relay = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "relay"],
            cwd=ROOT, env=env_of(ns), stdout=out, stderr=out, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        wait_all_sent(ns)
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(30)
    text = log.read_text()
    assert relay.returncode == 0, text
    expect = 50 if moment == "_mark" else 0
    assert f"{expect} unsent rows were already there" in text, text
    records = assert_exactly_once(ns)
    assert len(records) == 120


@pytest.mark.services
def test_latency_and_throughput(ns: Settings, capsys, tmp_path: Path):
    """Figures, printed: commit -> read_committed consumer latency of single orders,
    and the rate at which a relay drains a backlog. Loose bounds only."""
    ledger, account = ledger_of(ns), funded_account(ns)
    topic = topics_of(ns).orders
    consumer = Consumer(
        {
            "bootstrap.servers": ns.bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 5,
        }
    )
    parts = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    committed: dict[str, float] = {}
    received: dict[str, float] = {}
    done = threading.Event()

    def consume() -> None:
        while not done.is_set():
            m = consumer.poll(0.05)  # consume(n, t) would wait for n messages or t
            if m is not None and not m.error():
                received[decode(m.value())["order"]["id"]] = time.perf_counter()

    reader = threading.Thread(target=consume)
    reader.start()
    n = 300
    try:
        with relay_thread(ns) as relay:
            wait_for(lambda: relay.stats.active, what="the relay")
            for i in range(n):
                order = ledger.place(account, *limit_buy(SYMBOLS[i % 5]))
                committed[str(order.id)] = time.perf_counter()
                time.sleep(0.005)
            wait_for(lambda: len(received) >= n, 30, "every order at the consumer")
    finally:
        done.set()
        reader.join()
        consumer.close()
    lat = sorted((received[k] - committed[k]) * 1000 for k in committed)
    p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]

    # throughput: a backlog written while no relay runs, drained by a relay process
    backlog = 50_000
    payload = outbox_rows(ns)[-1][2]  # a real order message, about 1 KB
    with db.pool(ns.postgres).connection() as conn:
        conn.execute(
            "INSERT INTO outbox (topic, key, payload) SELECT %s, (%s::text[])[g %% 5 + 1], %s "
            "FROM generate_series(1, %s) AS g",
            (topic, list(SYMBOLS), payload, backlog),
        )
    log = tmp_path / "relay.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infra.outbox"],
            cwd=ROOT, env=env_of(ns), stdout=out, stderr=out, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        wait_for(lambda: b"active for" in log.read_bytes(), 30, "the relay process")
        t0 = time.perf_counter()
        wait_all_sent(ns, 60)
        drain = time.perf_counter() - t0
        stat = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    finally:
        proc.terminate()
        proc.wait(30)
    rate = backlog / drain
    with capsys.disabled():
        print(
            f"\noutbox relay: commit->consumer latency p50 {p50:.1f} ms p99 {p99:.1f} ms "
            f"({n} orders, one every 5 ms, relay in the test process); a backlog of "
            f"{backlog:,} rows drained by `python -m infra.outbox` in {drain:.2f} s "
            f"({rate:,.0f} rows/s); the relay process used {cpu:.2f} s of CPU in all "
            "(start-up included)"
        )
    assert p50 < 100 and rate > 1000  # sanity only: other work shares this machine's 2 cores
    assert len(assert_exactly_once(ns)) == n + backlog
