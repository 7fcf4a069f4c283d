"""Order placement benchmark: N concurrent HTTP clients -> POST /v1/orders -> PostgreSQL.

    .venv/bin/python -m bench.orders [--clients 8,32,128] [--seconds 10] [--runs 3]
                                     [--server run|trading] [--workers 2] [--idempotency]

Needs the services (`tapeflow up`) and Go (the load client, bench/orderload, is built
with `go build` on first use). Each run gets a fresh, isolated set-up (its own topic
namespace, Redis database and home, as bench.harness does): a funded account, a
symbol with a security directory entry and an NBBO quote in Redis, the API server,
and the outbox relay (`tapeflow relay`) moving every order on to Kafka oms.orders.
--server run serves the API from `tapeflow run` (one process, the default deployment);
--server trading from `python -m api.trading --workers W` (the REST routes that need
only PostgreSQL and Redis, in W processes).

The clients (one Go process) are closed-loop: each posts a 1-share limit buy as soon
as its previous answer came back. Each client trades for an account of its own (as at a
market open, many users at once); --accounts K makes them share K accounts, whose
orders then queue on the account row's lock. An order counts as accepted when the API answered
200, which it does only after the order's transaction committed; the run then checks
that PostgreSQL holds exactly that many orders and that the relay delivered every one
to oms.orders. Latency is the client's, from sending the request to reading the whole
answer; the first --warmup seconds are left out.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np

from bench.harness import (
    ROOT,
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
from bench.stream_run import _descendants, _wait_health
from infra import db
from infra.quote_store import QuoteStore
from infra.settings import Settings
from schemas.marketdata import NBBO_VENUE, Quote, Security

TARGET_RATE = 3000.0
TARGET_P99_MS = 50.0
SYMBOL = "BNCH"
ORDERLOAD_SRC = ROOT / "bench" / "orderload"


def say(line: str = "") -> None:
    print(line, flush=True)


def build_orderload(out_dir: Path) -> Path:
    return go_binary(ORDERLOAD_SRC, ".", "orderload", out_dir)


@dataclass
class Result:
    clients: int
    accepted_per_s: float
    latencies_ms: np.ndarray
    refused: int
    errors: int
    in_postgres: int
    answered_200: int
    relayed: int
    cpu: dict[str, float]


def _seed_market(settings: Settings) -> None:
    now = time.time_ns()
    QuoteStore(settings.redis).apply(
        [
            Security(SYMBOL, "iex", 100, False, now, now),
            Quote(
                SYMBOL, NBBO_VENUE, Decimal("100.00"), 500, Decimal("100.02"), 300, now, now, now
            ),
        ]
    )


def _spawn(pipe: BenchPipeline, args: list[str], log: str) -> subprocess.Popen[bytes]:
    with open(pipe.home / log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env={**os.environ, **pipe.env},
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )


def _postgres_pids() -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() in ("postgres", "postmaster"):
                        out.append(int(pid))
            except OSError:
                pass
    return out


def _client_ports(pids: list[int], server_port: int) -> set[int]:
    """Local ports of the TCP connections these processes hold to `server_port`."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    local, remote, inode = cols[1], cols[2], cols[9]
                    if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == server_port:
                        ports.add(int(local.rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


def _run_backends(base: Settings, pids: list[int]) -> list[int]:
    """PostgreSQL's own processes (postmaster, WAL writer, ...) and the backends serving
    these client processes: not those of other sessions on a shared machine."""
    ports = _client_ports(pids, base.postgres_port)
    with db.pool(base.postgres).connection() as conn:
        rows = conn.execute(
            "SELECT pid, backend_type, client_port FROM pg_stat_activity"
        ).fetchall()
    mine = [pid for pid, kind, port in rows if kind != "client backend" or port in ports]
    postmaster = [p for p in _postgres_pids() if p not in {r[0] for r in rows}]
    return mine + postmaster


def _relayed(pipe: BenchPipeline) -> int:
    from confluent_kafka import Consumer, TopicPartition

    from infra.topics import partitions_of

    c = Consumer({"bootstrap.servers": pipe.settings.bootstrap, "group.id": "bench-orders"})
    try:
        return sum(
            c.get_watermark_offsets(TopicPartition(pipe.topics.orders, p), timeout=5)[1]
            for p in partitions_of(pipe.settings.bootstrap, pipe.topics.orders)
        )
    finally:
        c.close()


def run_once(base: Settings, args: argparse.Namespace, clients: int, load: Path) -> Result:
    pipe = BenchPipeline(base)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _seed_market(pipe.settings)
        tokens, made = funded_accounts(
            base, min(clients, args.accounts) if args.accounts else clients, "orders"
        )
        token_file = pipe.home / "tokens.txt"
        token_file.write_text("\n".join(tokens))
        if args.server == "run":
            pipe.start()
            server = pipe.proc
            assert server is not None
        else:
            server = _spawn(
                pipe,
                [
                    "-m",
                    "api.trading",
                    "--port",
                    str(pipe.settings.api_port),
                    "--workers",
                    str(args.workers),
                ],
                "trading.log",
            )
            procs.append(server)
        relay = _spawn(pipe, ["-m", "infra.cli", "relay"], "relay.log")
        procs.append(relay)
        _wait_health(pipe.url, server)
        pids = {
            "api": _descendants(server.pid),
            "relay": [relay.pid],
            "postgres": _postgres_pids(),
            **service_pids(base),
        }
        wait_quiet(pids, 0.3, args.quiet_timeout)
        cmd = [
            str(load),
            "-url",
            f"{pipe.url}/v1/orders",
            "-tokens",
            str(token_file),
            "-clients",
            str(clients),
            "-seconds",
            str(args.seconds + args.warmup),
            "-symbol",
            SYMBOL,
        ]
        if args.idempotency:
            cmd.append("-idempotency")
        t0 = time.time_ns()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        time.sleep(args.warmup)
        # PostgreSQL's processes as they are now: the API's and the relay's connections
        # open with the first orders.
        pids["postgres"] = _run_backends(base, pids["api"] + pids["relay"])
        before = CpuBook.take(pids)
        out = proc.stdout.read() if proc.stdout else b""
        after = CpuBook.take(pids)
        # The load client's CPU from its rusage (its pid is gone once it exits): the
        # average over its whole run, warm-up included.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        load_s = (time.time_ns() - t0) / 1e9
        rows = np.loadtxt(out.decode().splitlines(), dtype=np.int64, ndmin=2)
        start = t0 + int(args.warmup * 1e9)
        window = rows[rows[:, 0] >= start]
        ok = window[window[:, 2] == 200]
        span_s = (window[:, 0].max() + window[:, 1].max() - start) / 1e9 if len(window) else 1
        with db.pool(base.postgres).connection() as conn:
            in_pg = conn.execute(
                "SELECT count(*) FROM orders WHERE account_id = ANY(%s)", ([a.id for a in made],)
            ).fetchone()[0]
        if ((rows[:, 2] == 0) | (rows[:, 2] >= 500)).any():
            kept = base.home.resolve() / "logs" / f"bench-orders-{time.time_ns()}"
            kept.mkdir(parents=True, exist_ok=True)
            for log in pipe.home.glob("*.log"):
                shutil.copy(log, kept / log.name)
            say(f"  errors: the server's logs are kept in {kept}")
        deadline = time.monotonic() + 30
        relayed = _relayed(pipe)
        while relayed < in_pg and time.monotonic() < deadline:
            time.sleep(0.5)
            relayed = _relayed(pipe)
        return Result(
            clients=clients,
            accepted_per_s=len(ok) / span_s,
            latencies_ms=np.sort(ok[:, 1] / 1e6),
            refused=int(((window[:, 2] >= 400) & (window[:, 2] < 500)).sum()),
            errors=int(((window[:, 2] == 0) | (window[:, 2] >= 500)).sum()),
            in_postgres=int(in_pg),
            answered_200=int((rows[:, 2] == 200).sum()),
            relayed=relayed,
            cpu=cores_between(before, after)
            | {"clients": (usage.ru_utime + usage.ru_stime) / load_s},
        )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        pipe.close()


def row(r: Result) -> str:
    c = r.cpu
    durable = "yes" if r.in_postgres == r.answered_200 else f"NO ({r.in_postgres})"
    return (
        f"{r.clients:>7} {r.accepted_per_s:>9,.0f} {pct(r.latencies_ms, 50):>7.1f}"
        f" {pct(r.latencies_ms, 90):>7.1f} {pct(r.latencies_ms, 99):>7.1f}"
        f" {pct(r.latencies_ms, 100):>7.1f} {r.refused:>6} {r.errors:>6} {durable:>7}"
        f" {r.relayed:>8,} | {c.get('api', math.nan):>5.2f} {c.get('postgres', math.nan):>5.2f}"
        f" {c.get('relay', math.nan):>5.2f} {c.get('clients', math.nan):>5.2f}"
        f" {c.get('redis', 0) + c.get('kafka', 0):>5.2f} {c.get('machine', math.nan):>5.2f}"
        f" {c.get('others', math.nan):>5.2f}"
    )


HEADER = (
    f"{'clients':>7} {'orders/s':>9} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}"
    f" {'4xx':>6} {'errors':>6} {'durable':>7} {'relayed':>8} | {'api':>5} {'pg':>5}"
    f" {'relay':>5} {'load':>5} {'k+r':>5} {'all':>5} {'other':>5}"
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.orders", description=__doc__.split("\n")[0])
    p.add_argument("--clients", default="8,32,128")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--server", choices=("run", "trading"), default="run")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--idempotency", action="store_true")
    p.add_argument(
        "--accounts",
        type=int,
        default=0,
        help="accounts the clients share (default: one per client); the orders of one "
        "account serialize on its row lock",
    )
    p.add_argument("--quiet-timeout", type=float, default=60.0)
    args = p.parse_args(argv)
    base = Settings()
    server = services_ready(base)
    if server is None:
        return 2
    db.migrate(base)
    load = build_orderload(base.home.resolve() / "bin")
    say("Tapeflow order placement benchmark")
    say("\n".join(["", *machine_lines(server)]))
    say(f"server      {args.server}" + (f" x{args.workers}" if args.server == "trading" else ""))
    say(f"window      {args.seconds:g} s after {args.warmup:g} s warm-up, {args.runs} runs each")
    say("")
    say(HEADER)
    summary = []
    for n in [int(x) for x in args.clients.split(",")]:
        results = []
        for _ in range(args.runs):
            r = run_once(base, args, n, load)
            say(row(r))
            results.append(r)
        rates = [r.accepted_per_s for r in results]
        p99s = [pct(r.latencies_ms, 99) for r in results]
        p50s = [pct(r.latencies_ms, 50) for r in results]
        summary.append((n, rates, p50s, p99s))
    say("")
    say("median [min .. max] over runs")
    for n, rates, p50s, p99s in summary:
        say(
            f"  {n:>4} clients: {median(rates):,.0f} [{min(rates):,.0f} .. {max(rates):,.0f}]"
            f" orders/s, p50 {median(p50s):.1f} ms, p99 {median(p99s):.1f}"
            f" [{min(p99s):.1f} .. {max(p99s):.1f}] ms"
        )
    best = max(summary, key=lambda s: median(s[1]))
    met = median(best[1]) >= TARGET_RATE and median(best[3]) < TARGET_P99_MS
    say(
        f"target {TARGET_RATE:,.0f} orders/s with p99 < {TARGET_P99_MS:.0f} ms: "
        + ("met" if met else "missed")
        + f" (best: {best[0]} clients)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
