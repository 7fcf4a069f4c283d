"""An isolated pipeline for one benchmark run, and the probes the benchmark reads.

Like tests/conftest.py's Pipeline: its own home folder (chDB, recovery), Kafka topic
namespace, Redis database and API port, and a `python -m infra.cli run` subprocess.
Everything it created (topics, Redis keys, the home folder) is removed by `close`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import redis
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from infra import accounts, api_keys, db, services
from infra.accounts import Account
from infra.ledger import Ledger
from infra.settings import Settings
from infra.topics import Topics, all_topics, ensure_topics, partitions_of, topics_of

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def services_ready(base: Settings) -> str | None:
    """The Redis server's version (for the machine lines) once every service is healthy;
    None, after saying which are not, otherwise."""
    bad = [s.name for s in services.up(base) if not s.healthy]
    if bad:
        print(f"services not healthy: {', '.join(bad)} (run `tapeflow up`)", flush=True)
        return None
    return str(redis.Redis(host="127.0.0.1", port=base.redis_port).info("server")["redis_version"])


def funded_accounts(base: Settings, n: int, name: str) -> tuple[list[str], list[Account]]:
    """n new users' accounts, each with 1,000,000,000 of cash and a key that is never rate
    limited: their tokens and accounts."""
    pool = db.pool(base.postgres)
    ledger = Ledger(pool, Topics())
    tokens, made = [], []
    for _ in range(n):
        user, account = accounts.create_user(pool, f"{name}-{time.time_ns()}@bench.local", "Bench")
        _, token = api_keys.create_key(pool, user.id, "bench", rate_limit_per_minute=100_000_000)
        ledger.deposit(account.id, Decimal("1000000000"))
        tokens.append(str(token))
        made.append(account)
    return tokens, made


def go_binary(module: Path, package: str, name: str, out_dir: Path) -> Path:
    """`go build` a load client of bench/ into out_dir, again only when its sources changed."""
    binary = out_dir / name
    src = module / package
    newest = max(p.stat().st_mtime for p in src.iterdir())
    if not binary.exists() or binary.stat().st_mtime < newest:
        out_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["go", "build", "-o", str(binary), f"./{package}"], cwd=module, check=True)
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_redis_db(base: Settings) -> int:
    """The highest-numbered empty Redis database (tests count up from 1, so we stay clear)."""
    client = redis.Redis(host="127.0.0.1", port=base.redis_port)
    try:
        count = int(client.config_get("databases").get("databases") or 16)
        used = set(client.info("keyspace"))  # {"db0": {...}, ...}: only non-empty ones
    finally:
        client.close()
    for number in range(count - 1, 0, -1):
        if f"db{number}" not in used:
            return number
    raise RuntimeError("no empty Redis database to run the benchmark in")


# Extra arguments for `tapeflow run` (bench.pipeline --split sets ["--split"]).
RUN_ARGS: list[str] = []


class BenchPipeline:
    """One isolated pipeline and its `tapeflow run` process."""

    def __init__(self, base: Settings) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="tapeflow-bench-"))
        redis_db = free_redis_db(base)
        self.env = {
            "TAPEFLOW_HOME": str(self.home),
            "TAPEFLOW_NAMESPACE": f"bench{uuid.uuid4().hex[:8]}.",
            "TAPEFLOW_REDIS_DB": str(redis_db),
            "TAPEFLOW_API_PORT": str(free_port()),
        }
        self.settings = Settings(
            home=self.home,
            namespace=self.env["TAPEFLOW_NAMESPACE"],
            redis_db=redis_db,
            api_port=int(self.env["TAPEFLOW_API_PORT"]),
            kafka_port=base.kafka_port,
            redis_port=base.redis_port,
        )
        self.topics = topics_of(self.settings)
        self.redis = redis.Redis.from_url(self.settings.redis)
        ensure_topics(self.settings)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.home / "run.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    def start(self) -> None:
        """Spawn `python -m infra.cli run` (API + normalize, quotes, candles)."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                # No end of day: a benchmark's run would close a past day of the shared
                # database in the middle of a measurement.
                [sys.executable, "-m", "infra.cli", "run", *RUN_ARGS, "--no-eod"],
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )

    def pids(self) -> list[int]:
        """The `tapeflow run` process and, with --split, its flow processes."""
        deadline = time.monotonic() + 10
        while True:
            path = f"/proc/{self.pid}/task/{self.pid}/children"
            try:
                with open(path) as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                children = []
            if "--split" not in RUN_ARGS or len(children) >= 2 or time.monotonic() > deadline:
                return [self.pid, *children]
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"tapeflow run exited ({self.proc.returncode}):\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def wait_healthy(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"API did not come up in {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def close(self) -> None:
        """Stop the process and remove everything this run created."""
        self.stop()
        try:
            self.redis.flushdb()
            self.redis.close()
        finally:
            delete_topics(self.settings)
            shutil.rmtree(self.home, ignore_errors=True)


def delete_topics(settings: Settings) -> None:
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    for future in admin.delete_topics(all_topics(settings), operation_timeout=10).values():
        with contextlib.suppress(Exception):  # already gone or never made: nothing to do
            future.result()


class TopicCounter:
    """Messages in md.quotes, md.trades and md.status: sums of partition high watermarks."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.topics = topics
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}"}
        )
        names = [topics.quotes, topics.trades, topics.status]
        self.partitions = {
            t: [TopicPartition(t, p) for p in partitions_of(bootstrap, t)] for t in names
        }

    def counts(self) -> dict[str, int]:
        return {
            topic: sum(
                self.consumer.get_watermark_offsets(tp, timeout=5, cached=False)[1] for tp in parts
            )
            for topic, parts in self.partitions.items()
        }

    def close(self) -> None:
        self.consumer.close()


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds used by one process (all its threads) at a wall-clock instant."""

    wall: float
    cpu_s: float


def process_cpu(pid: int) -> CpuSample:
    """utime + stime from /proc/<pid>/stat (fields 14 and 15), in seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return CpuSample(time.monotonic(), 0.0)
    # After the ')' that ends the command name, field 3 (state) is index 0.
    return CpuSample(time.monotonic(), (int(fields[11]) + int(fields[12])) / CLK_TCK)


def machine_busy_s() -> float:
    """CPU-seconds all cores have spent busy since boot (/proc/stat, all but idle+iowait)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK  # guest is within user


@dataclass(frozen=True, slots=True)
class CpuBook:
    """CPU-seconds of named processes and of the whole machine, at one instant."""

    wall: float
    by_name: dict[str, float]
    machine_s: float

    @staticmethod
    def take(pids: dict[str, list[int]]) -> CpuBook:
        by_name = {
            name: sum(process_cpu(pid).cpu_s for pid in group) for name, group in pids.items()
        }
        return CpuBook(time.monotonic(), by_name, machine_busy_s())


def cores_between(before: CpuBook, after: CpuBook) -> dict[str, float]:
    """Cores used per name, by the whole machine, and by every other process ("others")."""
    wall = after.wall - before.wall
    if wall <= 0:
        return {}
    out = {n: (after.by_name[n] - before.by_name[n]) / wall for n in after.by_name}
    out["machine"] = (after.machine_s - before.machine_s) / wall
    out["others"] = max(0.0, out["machine"] - sum(out[n] for n in after.by_name))
    return out


def service_pids(base: Settings) -> dict[str, list[int]]:
    """Kafka's and Redis's pids, as the services module knows them."""
    from infra import services

    return {s.name: [s.pid] for s in services.status(base) if s.pid and s.name != "postgres"}


def wait_quiet(pids: dict[str, list[int]], limit: float, timeout_s: float) -> float:
    """Wait (at most timeout_s) until processes not in pids use under `limit` cores over 1 s.

    Returns the cores those other processes used in the last second measured, so a
    result taken on a busy machine says so."""
    deadline = time.monotonic() + timeout_s
    while True:
        before = CpuBook.take(pids)
        time.sleep(1.0)
        others = cores_between(before, CpuBook.take(pids))["others"]
        if others < limit or time.monotonic() >= deadline:
            return others
