"""Part 2: end-to-end latency at a fixed offered rate.

A producer (this process) sends JSON-feed quote lines, one Quote per Kafka message,
round-robin over bench-only symbols (ZQ00, ZQ01, ...) with unique, increasing event
times, into md.raw.nasdaq of a fresh pipeline. Messages are pre-encoded; each ms the
producer sends however many are due so the offered rate is exact on average, and it
stamps each message's wall-clock send time right before produce().

A subscriber in another process (bench.subscriber) PSUBSCRIBEs to quotes:ZQ* and
stamps each venue quote it receives (NBBO messages are skipped), matching on
(symbol, event_ns). Latency = receive wall time - send wall time, same machine and
clock: Kafka in, normalize, Kafka md.quotes, the quotes flow, the Redis write and
the PUBLISH. The quotes flow conflates each batch to the newest quote per
(symbol, venue), so some sent quotes are never published; the fraction observed is
reported. Quotes sent in the first `warmup_s` are left out of the statistics.

Before the timed run one quote per symbol is sent and awaited in Redis, so the flows
are known to be running (and their per-symbol state exists) when timing starts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from decimal import Decimal

from confluent_kafka import Producer

from bench.harness import BenchPipeline, CpuBook, cores_between, service_pids, wait_quiet
from bench.machine import percentile
from bench.subscriber import Listener, Received
from infra.replay import producer
from infra.settings import Settings
from schemas.json_feed import encode_event
from schemas.marketdata import Quote

VENUE = "nasdaq"
SYMBOL_PREFIX = "ZQ"
MS = 1_000_000
IDLE_S = 3.0  # seconds of no traffic measured before the timed run
QUIET_CORES = 0.3  # other processes must use less before the run starts


@dataclass(frozen=True, slots=True)
class Plan:
    rate: int
    seconds: float
    symbols: int
    warmup_s: float

    @property
    def total(self) -> int:
        return int(self.rate * self.seconds)

    @property
    def warm(self) -> int:
        return int(self.rate * self.warmup_s)

    def symbol(self, i: int) -> str:
        return f"{SYMBOL_PREFIX}{i % self.symbols:0{len(str(self.symbols - 1))}d}"


def quote_line(symbol: str, i: int, event_ns: int) -> bytes:
    bid = Decimal(10_000 + i % 13).scaleb(-2)
    return encode_event(
        Quote(
            symbol=symbol,
            venue=VENUE,
            bid_price=bid,
            bid_size=100 * (1 + i % 5),
            ask_price=bid + Decimal("0.01"),
            ask_size=100 * (1 + i % 3),
            event_ns=event_ns,
            receive_ns=event_ns,
        )
    )


@dataclass
class Sent:
    keys: list[bytes]
    event_ns: list[int]
    payloads: list[bytes]
    at: list[int]  # wall-clock ns right before produce(); 0 = not sent


def encode_all(plan: Plan, base_ns: int) -> Sent:
    """Pre-encode every message so the paced loop only calls produce()."""
    step = 1_000_000_000 // plan.rate
    keys, times, payloads = [], [], []
    for i in range(plan.total):
        symbol = plan.symbol(i)
        event_ns = base_ns + i * step
        keys.append(symbol.encode())
        times.append(event_ns)
        payloads.append(quote_line(symbol, i, event_ns))
    return Sent(keys, times, payloads, [0] * plan.total)


@dataclass
class SendStats:
    seconds: float  # first to last send
    max_behind: int  # most messages that were due but not yet sent, at a burst's start
    cpu: dict[str, float]  # cores per process group, from the end of warm-up to the last send


def _produce(prod: Producer, topic: str, key: bytes, value: bytes) -> None:
    while True:
        try:
            prod.produce(topic, value=value, key=key)
            return
        except BufferError:
            prod.poll(0.001)


class Pacer:
    """Sends the pre-encoded messages in bursts every ms at the plan's rate."""

    def __init__(
        self, plan: Plan, sent: Sent, prod: Producer, topic: str, pids: dict[str, list[int]]
    ) -> None:
        self.plan, self.sent, self.prod, self.topic, self.pids = plan, sent, prod, topic, pids
        self.warm_cpu: CpuBook | None = None

    def run(self) -> SendStats:
        plan, sent = self.plan, self.sent
        start = time.monotonic_ns()
        i = max_behind = tick = 0
        while i < plan.total:
            due = min(plan.total, (time.monotonic_ns() - start) * plan.rate // 1_000_000_000 + 1)
            max_behind = max(max_behind, due - i)
            while i < due:
                sent.at[i] = time.time_ns()
                _produce(self.prod, self.topic, sent.keys[i], sent.payloads[i])
                i += 1
            self.prod.poll(0)
            if self.warm_cpu is None and i >= plan.warm:
                self.warm_cpu = CpuBook.take(self.pids)
            tick += 1
            pause = start + tick * MS - time.monotonic_ns()
            if pause > 0:
                time.sleep(pause / 1e9)
        return self._stats(max_behind)

    def _stats(self, max_behind: int) -> SendStats:
        assert self.warm_cpu is not None
        return SendStats(
            seconds=(self.sent.at[-1] - self.sent.at[0]) / 1e9,
            max_behind=max_behind,
            cpu=cores_between(self.warm_cpu, CpuBook.take(self.pids)),
        )


# ---------------------------------------------------------------- waiting on Redis


def wait_in_redis(pipe: BenchPipeline, wanted: dict[str, int], timeout_s: float) -> bool:
    """Until quote:{SYM} holds, for every symbol, a venue quote at least as new as wanted."""
    deadline = time.monotonic() + timeout_s
    pending = dict(wanted)
    while pending and time.monotonic() < deadline:
        pipe.check_alive()
        r = pipe.redis.pipeline(transaction=False)
        for symbol in pending:
            r.hget(f"quote:{symbol}", f"{VENUE}:ns")
        for (symbol, ns), raw in zip(list(pending.items()), r.execute(), strict=True):
            if raw is not None and int(raw[:20]) >= ns:
                del pending[symbol]
        if pending:
            time.sleep(0.1)
    return not pending


def last_per_symbol(sent: Sent, plan: Plan, upto: int) -> dict[str, int]:
    last: dict[str, int] = {}
    for i in range(max(0, upto - plan.symbols), upto):
        last[sent.keys[i].decode()] = sent.event_ns[i]
    return last


def prime(pipe: BenchPipeline, plan: Plan, prod: Producer, base_ns: int) -> None:
    """One quote per symbol, awaited in Redis: the flows are up and hold per-symbol state."""
    topic = pipe.topics.raw(VENUE)
    wanted: dict[str, int] = {}
    for k in range(plan.symbols):
        symbol, ns = plan.symbol(k), base_ns - 1_000_000_000 + k
        _produce(prod, topic, symbol.encode(), quote_line(symbol, k, ns))
        wanted[symbol] = ns
    prod.flush(30)
    if not wait_in_redis(pipe, wanted, 90):
        raise RuntimeError(f"priming quotes never reached Redis:\n{pipe.log_tail()}")


# ---------------------------------------------------------------- the run


def idle_cores(pids: dict[str, list[int]], seconds: float = IDLE_S) -> dict[str, float]:
    """What the running pipeline (and Kafka, Redis) cost with no traffic at all."""
    before = CpuBook.take(pids)
    time.sleep(seconds)
    return cores_between(before, CpuBook.take(pids))


@dataclass
class LatencyResult:
    plan: Plan
    sent: Sent
    received: Received
    stats: SendStats
    drained: bool
    idle: dict[str, float]  # cores with the pipeline up and no traffic
    others_before: float = 0.0

    def _observed(self, first: int) -> list[tuple[int, int, int, int]]:
        """(index, send ns, parse ns, pub/sub receive ns) of observed quotes from `first` on."""
        out = []
        s, at = self.sent, self.received.at
        for i in range(first, self.plan.total):
            seen = at.get((s.keys[i].decode(), s.event_ns[i]))
            if seen is not None:
                out.append((i, s.at[i], seen[1], seen[0]))
        return out

    def latencies_ms(self) -> dict[str, list[float]]:
        """Sorted latencies (ms) of the quotes sent after warm-up: end to end, and split at
        the moment normalize parsed the message (the receive_ns it stamps)."""
        rows = self._observed(self.plan.warm)
        out = {
            "total": [(recv - sent) / 1e6 for _, sent, _, recv in rows],
            "to_parse": [(parsed - sent) / 1e6 for _, sent, parsed, _ in rows],
            "after_parse": [(recv - parsed) / 1e6 for _, _, parsed, recv in rows],
        }
        for values in out.values():
            values.sort()
        return out

    def per_second_p99(self) -> list[float]:
        """p99 (ms) of the quotes sent in each whole second, from the start of sending."""
        buckets: dict[int, list[float]] = {}
        start = self.sent.at[0]
        for _, sent, _, recv in self._observed(0):
            buckets.setdefault((sent - start) // 1_000_000_000, []).append((recv - sent) / 1e6)
        return [percentile(sorted(v), 99) for _, v in sorted(buckets.items())]


def run_latency(base: Settings, plan: Plan, quiet_s: float) -> LatencyResult:
    pids = {"producer": [os.getpid()], **service_pids(base)}
    others = wait_quiet(pids, QUIET_CORES, quiet_s)
    pipe = BenchPipeline(base)
    sub = Listener(base.redis_port, f"quotes:{SYMBOL_PREFIX}*")
    try:
        sub.start()
        pipe.start()
        pipe.wait_healthy()
        sub.wait_ready()
        pids |= {"pipeline": pipe.pids(), "subscriber": [sub.pid]}
        result = _timed(pipe, plan, sub, pids)
        result.others_before = others
        return result
    finally:
        sub.close()
        pipe.close()


def _timed(
    pipe: BenchPipeline, plan: Plan, listener: Listener, pids: dict[str, list[int]]
) -> LatencyResult:
    prod = producer(pipe.settings.bootstrap)
    base_ns = time.time_ns()
    prime(pipe, plan, prod, base_ns)
    sent = encode_all(plan, base_ns)
    idle = idle_cores(pids)
    stats = Pacer(plan, sent, prod, pipe.topics.raw(VENUE), pids).run()
    prod.flush(30)
    drained = wait_in_redis(pipe, last_per_symbol(sent, plan, plan.total), 30)
    time.sleep(0.5)  # the PUBLISH of the last write is on its way to the subscriber
    return LatencyResult(plan, sent, listener.collect(), stats, drained, idle)
