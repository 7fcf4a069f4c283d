"""One run of the stream benchmark: a fresh pipeline, N Go clients, the paced feed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import orjson

from bench.harness import (
    BenchPipeline,
    CpuBook,
    cores_between,
    free_port,
    go_binary,
    service_pids,
    wait_quiet,
)
from bench.machine import percentile
from bench.stream_feed import PREFIX, VENUE, Feed, prime_lines, produce, publish, send
from bench.subscriber import Listener
from infra import accounts, api_keys, db
from infra.replay import producer
from infra.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
WSLOAD_SRC = ROOT / "bench" / "wsload"


def build_wsload(out_dir: Path) -> Path:
    """go build the load client (fetches its modules on first use)."""
    return go_binary(WSLOAD_SRC, ".", "wsload", out_dir)


@dataclass
class RunConfig:
    clients: int
    per: int
    feed: Feed
    edge: str  # "run": WS served by `tapeflow run`; "separate": by `python -m api.stream`
    split: bool  # the flows normalize and quotes in processes of their own
    source: str  # "kafka": the feed goes through the pipeline; "redis": PUBLISHed (edge only)
    stream_workers: int
    batch_ms: float
    tap: bool = False  # also time each quote's Redis PUBLISH (a subscriber process)


@dataclass
class RunResult:
    cfg: RunConfig
    latencies_ms: np.ndarray
    to_normalize_ms: np.ndarray  # of the same quotes: feed send -> the normalize flow parsed it
    to_publish_ms: np.ndarray  # with --tap, of every quote sent: feed send -> PUBLISH seen
    p99_by_second_ms: list[float]  # of the quotes sent in each second after the warm-up
    expected: int
    window_s: float
    frames: int
    totals: dict
    behind: int
    cpu: dict[str, float]
    log_tail: str = ""
    notes: list[str] = field(default_factory=list)


def _descendants(pid: int) -> list[int]:
    out, todo = [pid], [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
                out += kids
                todo += kids
    return out


def _token(base: Settings) -> str:
    db.migrate(base)
    pool = db.pool(base.postgres)
    email = f"bench-{time.time_ns()}@bench.local"
    user, _ = accounts.create_user(pool, email, "Stream Benchmark")
    _, token = api_keys.create_key(pool, user.id, "bench", rate_limit_per_minute=1_000_000)
    return str(token)


def _wait_health(url: str, proc: subprocess.Popen[bytes] | None, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited ({proc.returncode})")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def _wait_primed(pipe: BenchPipeline, feed: Feed, timeout_s: float = 90) -> None:
    pending = {feed.symbol(k) for k in range(feed.symbols)}
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        pipe.check_alive()
        r = pipe.redis.pipeline(transaction=False)
        order = sorted(pending)
        for s in order:
            r.hexists(f"quote:{s}", "NBBO")
        pending = {s for s, ok in zip(order, r.execute(), strict=True) if not ok}
        if pending:
            time.sleep(0.2)
    if pending:
        raise RuntimeError(f"{len(pending)} priming quotes never reached Redis")


QUIET_CORES = 0.3


def stride(cfg: RunConfig) -> int:
    """Client c subscribes to symbols c, c + stride, c + 2 * stride, ... (mod symbols)."""
    return max(1, cfg.feed.symbols // cfg.per)


def _spawn(pipe: BenchPipeline, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
    with open(pipe.home / log_name, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "run", *args],
            cwd=ROOT,
            env={**os.environ, **pipe.env},
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )


def _start_flows(pipe: BenchPipeline, flows: tuple[str, ...]) -> list[subprocess.Popen[bytes]]:
    """`tapeflow run --no-api --flows X`, one process per flow: no GIL shared between them."""
    return [_spawn(pipe, ["--no-api", "--flows", f], f"{f}.log") for f in flows]


def _start_main(pipe: BenchPipeline, flows: str) -> None:
    """The API (REST + WS) and the flows that need chDB, as BenchPipeline.start would."""
    pipe.proc = _spawn(pipe, ["--flows", flows], "run.log")


def most_quotes(cfg: RunConfig) -> int:
    """The most quotes one client can receive: every feed quote of its symbols, and a
    snapshot of each."""
    return -(-cfg.feed.total * cfg.per // cfg.feed.symbols) + cfg.per


def run_once(base: Settings, cfg: RunConfig, wsload: Path, quiet_s: float) -> RunResult:
    """Waits (up to quiet_s) for other processes to go quiet first, and says if they did not."""
    others = wait_quiet({"bench": [os.getpid()], **service_pids(base)}, QUIET_CORES, quiet_s)
    feed = cfg.feed
    pipe = BenchPipeline(base)
    extra = {
        "TAPEFLOW_STREAM_MAX_CONNECTIONS_PER_KEY": str(cfg.clients + 10),
        "TAPEFLOW_STREAM_BATCH_MS": str(cfg.batch_ms),
    }
    pipe.env.update(extra)
    stream_proc: subprocess.Popen[bytes] | None = None
    extra_procs: list[subprocess.Popen[bytes]] = []
    load: subprocess.Popen[bytes] | None = None
    out = Path(tempfile.mkstemp(prefix="tapeflow-wsload-", suffix=".bin")[1])
    # pub/sub channels are not per Redis database: the feed's symbol prefix selects them
    tap = Listener(base.redis_port, f"quotes:{PREFIX}*") if cfg.tap else None
    try:
        token = _token(base)
        edge_only = cfg.source == "redis"
        if edge_only:
            pass
        elif cfg.split:
            extra_procs += _start_flows(pipe, ("normalize", "quotes"))
            _start_main(pipe, "candles")
        else:
            pipe.start()
        if not edge_only:
            pipe.wait_healthy()
        port = pipe.settings.api_port
        if cfg.edge == "separate" or edge_only:
            port = free_port()
            with open(pipe.home / "stream.log", "ab") as log:
                stream_proc = subprocess.Popen(
                    [
                        sys.executable,
                        *("-m", "api.stream", "--port", str(port)),
                        *("--workers", str(cfg.stream_workers)),
                    ],
                    cwd=ROOT,
                    env={**os.environ, **pipe.env},
                    stdout=log,
                    stderr=log,
                    stdin=subprocess.DEVNULL,
                )
            _wait_health(f"http://127.0.0.1:{port}", stream_proc)
        prod = producer(pipe.settings.bootstrap)
        topic = pipe.topics.raw(VENUE)
        if not edge_only:
            for key, line in prime_lines(feed):
                produce(prod, topic, key, line)
            prod.flush(30)
            _wait_primed(pipe, feed)

        load = subprocess.Popen(
            [
                str(wsload),
                *("-url", f"ws://127.0.0.1:{port}/v1/stream", "-token", token),
                *("-clients", str(cfg.clients), "-per", str(cfg.per)),
                *("-nsym", str(feed.symbols), "-prefix", PREFIX, "-width", str(feed.width)),
                *("-stride", str(stride(cfg)), "-out", str(out)),
                *("-expect", str(most_quotes(cfg))),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "GOGC": "400"},
        )
        assert load.stdout is not None and load.stdin is not None
        ready = load.stdout.readline().decode().split()
        if not ready or ready[0] != "ready":
            raise RuntimeError(f"wsload did not start: {ready} {load.stderr.read()[:2000]!r}")
        notes = [] if int(ready[1]) == cfg.clients else [f"only {ready[1]} clients subscribed"]
        if others >= QUIET_CORES:
            notes.append(f"machine not quiet before: other processes used {others:.2f} cores")
        time.sleep(1.0)  # snapshots delivered, connections quiet
        if tap is not None:
            tap.start()
            tap.wait_ready()

        pids = {
            "pipeline": [] if edge_only else [pipe.pid, *(p.pid for p in extra_procs)],
            "clients": [load.pid],
            "producer": [os.getpid()],
        }
        if stream_proc is not None:
            pids["stream"] = _descendants(stream_proc.pid)
        if tap is not None:
            pids["tap"] = [tap.pid]
        pids |= service_pids(base)
        books: list[CpuBook] = []
        on_warm = lambda: books.append(CpuBook.take(pids))  # noqa: E731
        if edge_only:
            at, behind = publish(feed, pipe.redis, on_warm)
        else:
            at, behind = send(feed, prod, topic, on_warm)
        end_book = CpuBook.take(pids)
        prod.flush(30)
        time.sleep(2.0)  # the last quotes are on their way
        stdout, stderr = load.communicate(timeout=120)  # closes stdin: wsload stops
        lines = stdout.decode().strip().splitlines()
        totals = orjson.loads(lines[-1]) if lines else {"error": stderr.decode()[-2000:]}
        cpu = cores_between(books[0], end_book)
        if cpu.get("others", 0.0) >= QUIET_CORES:
            notes.append(f"NOT QUIET: other processes used {cpu['others']:.2f} cores meanwhile")
        published = tap.collect().at if tap is not None else {}
        return _result(cfg, out, at, behind, totals, cpu, notes, published)
    finally:
        if tap is not None:
            tap.close()
        if load is not None and load.poll() is None:
            load.kill()
        for proc in [p for p in (stream_proc, *extra_procs) if p is not None]:
            if proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(20)
        pipe.close()
        out.unlink(missing_ok=True)


def _result(
    cfg: RunConfig,
    out: Path,
    at: list[int],
    behind: int,
    totals: dict,
    cpu: dict[str, float],
    notes: list[str],
    published: dict[tuple[str, int], tuple[int, int]],
) -> RunResult:
    feed = cfg.feed
    recs = np.fromfile(out, dtype="<i8").reshape(-1, 4)
    sym, ev, parsed, recv = recs[:, 0], recs[:, 1], recs[:, 2], recs[:, 3]
    off = ev - feed.base_ns
    i = off // feed.step
    ok = (off >= 0) & (off % feed.step == 0) & (i >= feed.warm) & (i < feed.total)
    ok &= (i % feed.symbols) == sym
    sent = np.asarray(at, dtype=np.int64)
    by_send = (recv[ok] - sent[i[ok]]) / 1e6
    second = (i[ok] - feed.warm) // feed.rate
    # nearest rank, as every other percentile printed (an empty second: nan)
    p99_by_second = [
        percentile(np.sort(by_send[second == k]), 99)
        for k in range(int(second.max()) + 1 if second.size else 0)
    ]
    lat = np.sort(by_send)
    to_normalize = np.sort((parsed[ok] - sent[i[ok]]) / 1e6)  # Kafka in -> normalize parse
    to_publish = publish_latencies_ms(feed, sent, published)
    subs = np.zeros(feed.symbols, dtype=np.int64)
    for c in range(cfg.clients):
        for j in range(cfg.per):
            subs[(c + j * stride(cfg)) % feed.symbols] += 1
    idx = np.arange(feed.warm, feed.total)
    expected = int(subs[idx % feed.symbols].sum())
    window = (at[-1] - at[feed.warm]) / 1e9 if feed.total > feed.warm + 1 else 0.0
    return RunResult(
        cfg=cfg,
        latencies_ms=lat,
        to_normalize_ms=to_normalize,
        to_publish_ms=to_publish,
        p99_by_second_ms=p99_by_second,
        expected=expected,
        window_s=window,
        frames=int(totals.get("frames", 0)),
        totals=totals,
        behind=behind,
        cpu=cpu,
        notes=notes,
    )


def publish_latencies_ms(
    feed: Feed, sent: np.ndarray, published: dict[tuple[str, int], tuple[int, int]]
) -> np.ndarray:
    """Sorted ms from each feed quote's send to its PUBLISH seen by the tap, for the quotes
    sent after the warm-up that were published (the quotes flow may conflate some)."""
    seen = [
        (hit[0] - sent[k]) / 1e6
        for k in range(feed.warm, feed.total)
        if (hit := published.get((feed.symbol(k), feed.base_ns + k * feed.step)))
    ]
    return np.sort(np.array(seen, dtype=np.float64))
