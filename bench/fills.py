"""Order-to-fill benchmark: POST /v1/orders -> ledger -> relay -> execution flow ->
oms.executions -> ledger flow -> trade_update on WS /v1/stream.

    .venv/bin/python -m bench.fills [--rates 250,500,1000] [--seconds 10] [--runs 3]
                                    [--accounts 50] [--split] [--hops] [--warmup 0]

Needs the services (`tapeflow up`) and Go (bench/wsload/fillload is built on first use).
Each run gets a fresh, isolated pipeline (bench.harness: its own topic namespace, Redis
database, home and API port) started with `tapeflow run` (`--split`: the flows that
need no chDB in processes of their own), its market clock set into a regular session
(TAPEFLOW_CLOCK_START), the symbols' security directory entries in Redis, and a feed of
venue quotes (500 a second, deep displayed size, event times in the same session) into
md.raw.nasdaq, so every market order is marketable at once.

The load (one Go process) opens one WebSocket per account subscribed to trade_updates,
then posts 1-share market buys at a fixed total rate (open loop) round-robin over the
accounts and symbols. Latency of an order = the wall time its first fill event was parsed
from the account's WebSocket - the wall time the API's 200 answer (the durable
acknowledgement) was read. acks/s and fills/s are counted over the span from the first
to the last acknowledgement (fill), not the nominal window: the load posts with at most
--workers requests in flight, so an API that answers slowly stretches the sending past
the window, and the rate it really offered is acks/s. The target (issue 5): p99 under
100 ms at 1,000 orders/s, with the load holding that rate. --hops prints, per run, where
the orders' time went (bench/hops.py): placement, relay, execution, waiting for the
ledger, and the ledger transaction with the stream.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from bench import harness, hops
from bench.harness import (
    BenchPipeline,
    CpuBook,
    cores_between,
    funded_accounts,
    go_binary,
    service_pids,
    services_ready,
    wait_quiet,
)
from bench.machine import machine_lines, median
from bench.machine import percentile as pct
from bench.orders import _postgres_pids
from bench.stream_run import _descendants
from infra import db, replay
from infra.quote_store import QuoteStore
from infra.settings import Settings
from schemas.marketdata import Security

TARGET_RATE = 1000
TARGET_P99_MS = 100.0
SESSION_START = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)  # 10:00 New York, a Tuesday
SYMBOLS = [f"FL{i:02d}" for i in range(20)]
FILLLOAD_SRC = harness.ROOT / "bench" / "wsload"


def say(line: str = "") -> None:
    print(line, flush=True)


def build_fillload(out_dir: Path) -> Path:
    return go_binary(FILLLOAD_SRC, "fillload", "fillload", out_dir)


class QuoteFeed(threading.Thread):
    """Venue quotes for every symbol, `rate` a second, in the session's feed time."""

    def __init__(self, bootstrap: str, topic: str, rate: float = 500.0) -> None:
        super().__init__(daemon=True)
        # The feed handler's own producer (infra/replay.py, its linger). The 2 ms this
        # used before cost the broker 0.43 cores for this feed against 0.34 (one run each).
        self.producer = replay.producer(bootstrap)
        self.topic, self.rate = topic, rate
        self.stop = threading.Event()

    def run(self) -> None:
        t0, n = time.monotonic(), 0
        while not self.stop.is_set():
            symbol = SYMBOLS[n % len(SYMBOLS)]
            at = SESSION_START + timedelta(seconds=time.monotonic() - t0)
            stamp = at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"
            line = (
                f'{{"T":"q","S":"{symbol}","bx":"Q","bp":"99.9900","bs":100000,'
                f'"ax":"Q","ap":"100.0100","as":100000,"t":"{stamp}"}}'
            )
            self.producer.produce(self.topic, key=symbol.encode(), value=line.encode())
            self.producer.poll(0)
            n += 1
            due = t0 + n / self.rate
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
        self.producer.flush(10)


@dataclass
class Result:
    rate: int
    acked: int
    filled: int
    latencies_ms: np.ndarray
    # Over the span from the first to the last event, not the nominal window: when the
    # API answers slower than the load's workers allow, sending stretches past it.
    acked_per_s: float
    filled_per_s: float
    cpu: dict[str, float]

    def held(self) -> bool:
        """Whether the load really was `rate`: orders acknowledged at 95 % of it or more."""
        return self.acked_per_s >= 0.95 * self.rate


def _per_s(stamps_ns: list[int]) -> float:
    if len(stamps_ns) < 2:
        return math.nan
    return (len(stamps_ns) - 1) / ((max(stamps_ns) - min(stamps_ns)) / 1e9)


def latencies_ms(acked: list[list[str]], warmup_s: float = 0.0) -> np.ndarray:
    """Sorted order-to-fill latencies of the filled orders (`id ack_ns fill_ns status`
    rows), leaving out those acknowledged in the first `warmup_s` after the first
    acknowledgement."""
    if not acked:
        return np.array([], dtype=float)
    start = min(int(r[1]) for r in acked) + int(warmup_s * 1e9)
    return np.sort(
        np.array(
            [(int(r[2]) - int(r[1])) / 1e6 for r in acked if r[2] != "0" and int(r[1]) >= start],
            dtype=float,
        )
    )


def _primed(pipe: BenchPipeline, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = pipe.redis.pipeline(transaction=False)
        for s in SYMBOLS:
            r.hexists(f"quote:{s}", "NBBO")
        if all(r.execute()):
            return
        time.sleep(0.2)
    raise RuntimeError("the feed's quotes never reached Redis")


def run_once(base: Settings, args: argparse.Namespace, rate: int, load: Path) -> Result:
    harness.RUN_ARGS[:] = ["--split"] if args.split else []
    pipe = BenchPipeline(base)
    pipe.env["TAPEFLOW_CLOCK_START"] = SESSION_START.isoformat().replace("+00:00", "Z")
    feed = QuoteFeed(pipe.settings.bootstrap, pipe.topics.raw("nasdaq"))
    try:
        QuoteStore(pipe.settings.redis).apply(
            [Security(s, "iex", 100, False, 1, 1) for s in SYMBOLS]
        )
        tokens, _ = funded_accounts(base, args.accounts, "fills")
        token_file = pipe.home / "tokens.txt"
        token_file.write_text("\n".join(tokens))
        pipe.start()
        pipe.wait_healthy()
        feed.start()
        _primed(pipe)
        pids = {
            "pipeline": _descendants(pipe.pid),
            "postgres": _postgres_pids(),
            **service_pids(base),
        }
        wait_quiet(pids, 0.6, args.quiet_timeout)  # the feed itself keeps some load
        proc = subprocess.Popen(
            [
                str(load),
                "-api",
                pipe.url,
                "-ws",
                pipe.url.replace("http", "ws", 1) + "/v1/stream",
                "-tokens",
                str(token_file),
                "-rate",
                str(rate),
                "-seconds",
                str(args.seconds),
                "-symbols",
                ",".join(SYMBOLS),
                "-workers",
                str(args.workers),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"fillload did not start: {proc.stderr.read().decode()[-2000:]}")
        pids["load"] = [proc.pid]
        before = CpuBook.take(pids)
        out, _ = proc.communicate(timeout=args.seconds + 120)
        after = CpuBook.take(pids)
        rows = [line.split() for line in out.decode().splitlines() if line.strip()]
        acked = [r for r in rows if r[3] == "200"]
        filled = [r for r in acked if r[2] != "0"]
        if args.hops:
            time.sleep(1.0)  # the last fills' broker timestamps and ledger rows are in
            stamps = hops.collect(
                pipe.settings.bootstrap,
                pipe.topics.orders,
                pipe.topics.executions,
                db.pool(base.postgres),
                filled,
            )
            say("\n".join(hops.table(stamps)))
        lat = latencies_ms(acked, args.warmup)
        return Result(
            rate=rate,
            acked=len(acked),
            filled=len(filled),
            latencies_ms=lat,
            acked_per_s=_per_s([int(r[1]) for r in acked]),
            filled_per_s=_per_s([int(r[2]) for r in filled]),
            cpu=cores_between(before, after),
        )
    finally:
        feed.stop.set()
        pipe.close()


HEADER = (
    f"{'rate':>6} {'acked':>7} {'filled':>7} {'acks/s':>7} {'fills/s':>7} {'p50':>7} {'p90':>7}"
    f" {'p99':>7}"
    f" {'max':>8} | {'pipe':>5} {'pg':>5} {'k+r':>5} {'load':>5} {'all':>5}"
)


def row(r: Result) -> str:
    c = r.cpu
    return (
        f"{r.rate:>6} {r.acked:>7,} {r.filled:>7,} {r.acked_per_s:>7,.0f} {r.filled_per_s:>7,.0f}"
        f" {pct(r.latencies_ms, 50):>7.1f} {pct(r.latencies_ms, 90):>7.1f}"
        f" {pct(r.latencies_ms, 99):>7.1f} {pct(r.latencies_ms, 100):>8.1f}"
        f" | {c.get('pipeline', math.nan):>5.2f} {c.get('postgres', math.nan):>5.2f}"
        f" {c.get('kafka', 0) + c.get('redis', 0):>5.2f} {c.get('load', math.nan):>5.2f}"
        f" {c.get('machine', math.nan):>5.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fills", description=__doc__.split("\n")[0])
    p.add_argument("--rates", default="250,500,1000")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--accounts", type=int, default=50)
    p.add_argument("--split", action="store_true", help="tapeflow run --split")
    p.add_argument("--quiet-timeout", type=float, default=60.0)
    p.add_argument("--hops", action="store_true", help="print where the orders' time went")
    p.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        help="leave out of the latencies the orders acknowledged in the first S seconds",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=512,
        help="the load's concurrent HTTP requests at most (enough for rate x answer time)",
    )
    args = p.parse_args(argv)
    base = Settings()
    server = services_ready(base)
    if server is None:
        return 2
    db.migrate(base)
    load = build_fillload(base.home.resolve() / "bin")
    say("Tapeflow order-to-fill benchmark")
    say("\n".join(["", *machine_lines(server)]))
    say(f"pipeline    tapeflow run{' --split' if args.split else ''}; {args.accounts} accounts")
    say(f"window      {args.seconds:g} s of orders per run, {args.runs} runs per rate")
    if args.warmup:
        say(f"warm-up     latencies leave out the orders of the first {args.warmup:g} s")
    say("")
    say(HEADER)
    summary = []
    for rate in [int(x) for x in args.rates.split(",")]:
        results = [run_once(base, args, rate, load) for _ in range(args.runs)]
        for r in results:
            say(row(r))
        summary.append((rate, results))
    say("")
    say("median [min .. max] over runs")
    for rate, results in summary:
        p99 = [pct(r.latencies_ms, 99) for r in results]
        p50 = [pct(r.latencies_ms, 50) for r in results]
        fills = [r.filled_per_s for r in results]
        acks = [r.acked_per_s for r in results]
        missing = sum(r.acked - r.filled for r in results)
        say(
            f"  {rate:>5}/s: acks/s {median(acks):,.0f} [{min(acks):,.0f} .. {max(acks):,.0f}],"
            f" fills/s {median(fills):,.0f} [{min(fills):,.0f} .. {max(fills):,.0f}],"
            f" p50 {median(p50):.1f} ms, p99 {median(p99):.1f} [{min(p99):.1f} .. {max(p99):.1f}]"
            f" ms; acknowledged but not filled within the drain: {missing}"
        )
    at_target = [s for s in summary if s[0] == TARGET_RATE]
    if at_target:
        runs = at_target[0][1]
        p99 = median([pct(r.latencies_ms, 99) for r in runs])
        held = all(r.held() for r in runs)
        verdict = "met" if p99 < TARGET_P99_MS and held else "missed"
        say(f"target p99 < {TARGET_P99_MS:.0f} ms at {TARGET_RATE:,} orders/s: {verdict}")
        if not held:
            say(
                f"  (the load did not hold {TARGET_RATE:,} orders/s in every run: the API "
                "answered slower than its workers allow, see acks/s)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
