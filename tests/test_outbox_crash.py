"""Issue 4's crash test: a burst of orders through the real API while the API and the
outbox relay are SIGKILLed at random (seeded) moments and restarted.

The API is `uvicorn --factory api.app:create_app` and the relay `tapeflow relay`, each a
subprocess of an isolated pipeline (its own topic namespace, Redis database and home).
Client threads post limit orders, each with its own Idempotency-Key, and retry the same
request after a connection error or a 5xx until they get an answer. At the end:
- every acknowledged (HTTP 200) order is committed in PostgreSQL, and the account has
  no other order (a retry after a crash got the stored answer, not a second order);
- oms.orders (read_committed) holds every outbox row of the namespace exactly once by
  event id, each acknowledged order exactly once among the "new" messages, nothing
  else, each key in id order;
- no outbox row is left unsent once the relay has caught up.

TAPEFLOW_CRASH_SEED picks the kill schedule (default 4); TAPEFLOW_CRASH_SECONDS the
length of the burst (default 20).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from infra import db
from infra.ledger import Ledger
from infra.quote_store import QuoteStore
from infra.topics import topics_of
from schemas.marketdata import NBBO_VENUE, Quote, Security
from tests.conftest import Pipeline, new_user
from tests.test_outbox import ROOT, assert_exactly_once, read_topic, unsent, wait_all_sent

pytestmark = pytest.mark.services

SEED = int(os.environ.get("TAPEFLOW_CRASH_SEED", "4"))
BURST_S = float(os.environ.get("TAPEFLOW_CRASH_SECONDS", "20"))
CLIENTS = 6
SYMBOLS = ("AAPL", "MSFT", "NVDA", "TSLA", "AMZN")


class Service:
    """A subprocess that can be SIGKILLed and started again, its output in one log."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.args, self.env, self.log = name, args, env, log
        self.proc: subprocess.Popen | None = None
        self.starts = self.kills = 0

    def start(self) -> None:
        with open(self.log, "ab") as out:
            out.write(f"--- start {self.starts + 1} of {self.name}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.args, cwd=ROOT, env=self.env, stdout=out, stderr=out,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.starts += 1

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.kills += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode if self.proc else None


@dataclass
class Client:
    """One client thread: orders it had acknowledged, and what it went through."""

    index: int
    url: str
    headers: dict[str, str]
    stop: threading.Event
    acked: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> order id
    bodies: dict[str, dict] = field(default_factory=dict)
    retries: Counter = field(default_factory=Counter)  # why requests were sent again
    replays: int = 0
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        rng = random.Random(SEED * 1000 + self.index)
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=10) as http:
            n = 0
            while not self.stop.is_set():
                n += 1
                key = f"k{self.index}-{n}-{uuid.uuid4().hex[:6]}"
                body = {
                    "symbol": rng.choice(SYMBOLS),
                    "side": "buy",
                    "type": "limit",
                    "time_in_force": "day",
                    "qty": str(rng.randint(1, 5)),
                    "limit_price": "99.00",
                    "extended_hours": False,
                    "client_order_id": f"c{self.index}-{n}",
                }
                self.bodies[key] = body
                order_id = self._place(http, key, body)
                if order_id is None:  # refused (a bug for this test) or out of time
                    break
                self.acked[key] = order_id

    def _place(self, http: httpx.Client, key: str, body: dict) -> str | None:
        tried = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                resp = http.post("/v1/orders", json=body, headers={"Idempotency-Key": key})
            except httpx.TransportError as exc:
                # connection refused or dropped: the API is down, or died mid-request
                self.retries[type(exc).__name__] += 1
                tried = True
                time.sleep(0.05)
                continue
            if resp.status_code >= 500 or b"unknown_symbol" in resp.content:
                # (unknown_symbol: another test run on this machine flushed our Redis
                # database; keep_market writes the market again within 50 ms)
                self.retries[str(resp.status_code)] += 1
                tried = True
                time.sleep(0.05)
                continue
            if resp.status_code != 200:
                self.errors.append(f"{key}: {resp.status_code} {resp.text[:300]}")
                return None
            if tried:
                self.replays += 1
            return resp.json()["id"]
        self.errors.append(f"{key}: no answer within 60 s")
        return None


def seed_market(store: QuoteStore) -> None:
    ns = time.time_ns()
    events: list = []
    for s in SYMBOLS:
        events.append(Security(s, "iex", 100, False, 1, 1))
        events.append(
            Quote(s, NBBO_VENUE, Decimal("99.99"), 100, Decimal("100.00"), 100, ns, ns, 2 * ns)
        )
    store.apply(events)


def keep_market(store: QuoteStore, stop: threading.Event) -> None:
    """Write the market again if it disappears: a Redis database number can be shared
    with a concurrent test run on the same machine (CI runs one at a time)."""
    while not stop.wait(0.05):
        if not all(store.known(list(SYMBOLS))):
            seed_market(store)


def wait_http(service: Service, url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert service.alive(), f"{service.name} exited:\n{service.log.read_text()[-3000:]}"
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"{service.name} did not come up:\n{service.log.read_text()[-3000:]}")


def test_orders_survive_sigkill_of_api_and_relay(pipeline: Pipeline, tmp_path: Path):
    p = pipeline
    store = QuoteStore(p.settings.redis)
    seed_market(store)
    _, account, token = new_user(p.settings, rate_limit=100_000_000)
    ledger = Ledger(db.pool(p.settings.postgres), topics_of(p.settings))
    ledger.deposit(account.id, Decimal("100000000.00"))
    env = {**os.environ, **p.env}
    port = str(p.settings.api_port)
    api = Service(
        "api",
        [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app",
         "--host", "127.0.0.1", "--port", port, "--no-access-log", "--log-level", "warning"],
        env, tmp_path / "api.log",
    )  # fmt: skip
    relay = Service(
        "relay", [sys.executable, "-m", "infra.cli", "relay"], env, tmp_path / "relay.log"
    )
    api.start()
    relay.start()
    wait_http(api, p.url)

    stop = threading.Event()
    clients = [Client(i, p.url, {"Authorization": f"Bearer {token}"}, stop) for i in range(CLIENTS)]
    threads = [threading.Thread(target=c.run, name=f"client-{c.index}") for c in clients]
    threads.append(threading.Thread(target=keep_market, args=(store, stop)))
    for t in threads:
        t.start()

    # The chaos: at random moments kill the API, the relay or both, restart after a pause.
    rng = random.Random(SEED)
    schedule: list[tuple[float, str]] = []
    t0 = time.monotonic()
    try:

        def more() -> bool:  # the burst's length, and at least two kills of each
            elapsed = time.monotonic() - t0
            return elapsed < BURST_S or (min(api.kills, relay.kills) < 2 and elapsed < 2 * BURST_S)

        while more():
            time.sleep(rng.uniform(0.3, 2.5))
            victim = rng.choice(["api", "relay", "relay", "both"])
            targets = {"api": [api], "relay": [relay], "both": [api, relay]}[victim]
            schedule.append((round(time.monotonic() - t0, 2), victim))
            for s in targets:
                s.kill()
            time.sleep(rng.uniform(0.0, 0.5))
            for s in targets:
                s.start()
            if api in targets:
                wait_http(api, p.url)
    finally:
        stop.set()
        for t in threads:
            t.join(90)
    burst = time.monotonic() - t0

    errors = [e for c in clients for e in c.errors]
    assert not errors, errors[:5]
    acked = {oid: key for c in clients for key, oid in c.acked.items()}
    assert len(acked) == sum(len(c.acked) for c in clients), "two keys answered the same order"

    # The relay catches up; then it is stopped cleanly and Kafka is read.
    wait_all_sent(p.settings, 60)
    assert relay.stop() == 0, relay.log.read_text()[-3000:]
    api.stop()
    assert unsent(p.settings) == 0

    # 1. every acknowledged order is committed, and the account has no other order
    with db.pool(p.settings.postgres).connection() as conn:
        stored = dict(
            conn.execute(
                "SELECT id::text, client_order_id FROM orders WHERE account_id = %s",
                (account.id,),
            ).fetchall()
        )
    assert set(stored) == set(acked), (
        f"{len(set(acked) - set(stored))} acknowledged orders missing, "
        f"{len(set(stored) - set(acked))} orders nobody was told about"
    )
    by_key = {key: c.bodies[key]["client_order_id"] for c in clients for key in c.acked}
    assert all(stored[oid] == by_key[key] for oid, key in acked.items())

    # 2. oms.orders: every outbox row once by event id, every order once among "new"
    # (concurrent clients: rows go in the order their transactions became visible)
    records = assert_exactly_once(p.settings, read_topic(p.settings, 60), sequential=set())
    events = Counter(r["value"]["event_id"] for r in records)
    assert max(events.values()) == 1
    news = Counter(r["value"]["order"]["id"] for r in records if r["value"]["kind"] == "new")
    assert set(news) == set(acked) and max(news.values()) == 1

    relay_log = relay.log.read_text()
    recovered = sum(
        int(line.split("; ")[1].split()[0])
        for line in relay_log.splitlines()
        if "unsent rows were already there" in line
    )
    again = dict(sum((c.retries for c in clients), Counter()))
    print(
        f"\ncrash test (seed {SEED}): {len(acked)} orders acknowledged in {burst:.1f} s by "
        f"{CLIENTS} clients (requests sent again: {again}, "
        f"{sum(c.replays for c in clients)} answered after a retry); API killed {api.kills}x, "
        f"relay killed {relay.kills}x; {recovered} rows found already in Kafka at relay "
        f"restarts; {len(records)} records in oms.orders, no duplicate\n"
        f"kills (s, victim): {schedule}"
    )
    assert api.kills >= 2 and relay.kills >= 2, schedule
