"""Part 1: how fast the pipeline drains a backlog.

Method. A simulated session (infra.simulate: two venues, IEX TOPS + JSON lines) is
replayed flat out into the raw topics of a fresh namespace *before* the pipeline
process starts, so every flow finds a backlog and runs as fast as it can. Then
`tapeflow run` is started and sampled every SAMPLE_S:

- normalize: the high watermarks of md.quotes / md.trades / md.status. It is done
  when md.trades and md.status hold exactly the simulated trade/break and
  status/security/system counts and md.quotes has stopped growing.
- quotes -> Redis: for every (symbol, venue) the event time stored in quote:{SYM}.
  Each stored time is located in that pair's simulated quote sequence, which gives
  how many venue quotes the quotes flow has applied (it conflates a batch to the
  newest quote per key, so a stored time stands for every older quote of the pair).
  Done when every pair holds its last simulated quote.
- candles -> ClickHouse: through the API, the 1d candle's trade count of each symbol
  equals the simulated count (volume-eligible, unbroken trades). Checked once
  md.trades is complete, a symbol at a time, so the polling barely loads the API.

Clock zero (t0) is the first sample in which normalize has published anything, so
process start-up (imports, chDB, Bytewax) is reported apart from the rates. Rates
are messages / (done time - t0); the "steady" rates are the slope between 10 % and
90 % of progress, which leaves out the ramp-up and the tail.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.harness import (
    BenchPipeline,
    CpuBook,
    TopicCounter,
    cores_between,
    service_pids,
    wait_quiet,
)
from infra.replay import replay
from infra.settings import Settings
from infra.simulate import RECORDING_NAMES, simulate_session, write_session
from schemas.candles import build_candles
from schemas.marketdata import Event, Quote, Trade, TradeBreak

SAMPLE_S = 0.2
QUIET_CORES = 0.3  # other processes must use less before a run starts
SESSION_DATE = dt.date(2026, 11, 24)
STATUS_KINDS = ("status", "security", "system", "official")


@dataclass
class Session:
    """A simulated session on disk and what the pipeline must end up with."""

    paths: dict[str, Path]
    kinds: Counter[str]
    quote_times: dict[tuple[str, str], list[int]]  # (symbol, venue) -> event times, sorted
    trades_per_symbol: dict[str, int]

    @property
    def events(self) -> int:
        return sum(self.kinds.values())

    @property
    def venue_quotes(self) -> int:
        return self.kinds["quote"]

    @property
    def trade_messages(self) -> int:
        return self.kinds["trade"] + self.kinds["break"]

    @property
    def status_messages(self) -> int:
        return sum(self.kinds[k] for k in STATUS_KINDS)


def make_session(out_dir: Path, *, symbols: int, minutes: int, seed: int) -> Session:
    paths = write_session(out_dir, date=SESSION_DATE, symbols=symbols, seed=seed, minutes=minutes)
    events = simulate_session(date=SESSION_DATE, symbols=symbols, seed=seed, minutes=minutes)
    every: list[Event] = [e for venue_events in events.values() for e in venue_events]
    quote_times: dict[tuple[str, str], list[int]] = {}
    for e in every:
        if isinstance(e, Quote):
            quote_times.setdefault((e.symbol, e.venue), []).append(e.event_ns)
    for times in quote_times.values():
        times.sort()
    trades = [e for e in every if isinstance(e, Trade | TradeBreak)]
    per_symbol: Counter[str] = Counter()
    for (symbol, _), candle in build_candles(trades).items():
        per_symbol[symbol] += candle.trades
    return Session(
        paths=paths,
        kinds=Counter(e.kind for e in every),
        quote_times=quote_times,
        trades_per_symbol={s: n for s, n in per_symbol.items() if n},
    )


def preload(pipe: BenchPipeline, session: Session) -> tuple[int, float]:
    """Replay every venue's recording at max speed, in parallel; (records, seconds)."""
    counts: dict[str, int] = {}

    def one(venue: str, path: Path) -> None:
        stats = replay(path, venue, pipe.settings.bootstrap, None, pipe.topics.raw(venue))
        counts[venue] = stats.messages

    started = time.perf_counter()
    threads = [
        threading.Thread(target=one, args=(venue, path)) for venue, path in session.paths.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if set(counts) != set(RECORDING_NAMES):
        raise RuntimeError("a replay thread failed; see its traceback above")
    return sum(counts.values()), time.perf_counter() - started


# ---------------------------------------------------------------- progress probes


class RedisProgress:
    """How many venue quotes the quotes flow has applied, from the stored event times."""

    def __init__(self, pipe: BenchPipeline, session: Session) -> None:
        self.redis = pipe.redis
        self.pairs = sorted(session.quote_times)
        self.times = session.quote_times

    def applied(self) -> tuple[int, int]:
        """(venue quotes at or before the stored ones, pairs holding their last quote)."""
        pipe = self.redis.pipeline(transaction=False)
        for symbol, venue in self.pairs:
            pipe.hget(f"quote:{symbol}", f"{venue}:ns")
        applied = complete = 0
        for pair, raw in zip(self.pairs, pipe.execute(), strict=True):
            if raw is None:
                continue
            times = self.times[pair]
            upto = bisect.bisect_right(times, int(raw[:20]))
            applied += upto
            complete += upto == len(times)
        return applied, complete


class CandleProgress:
    """Symbols whose 1d candle (via the API) counts every simulated trade."""

    def __init__(self, pipe: BenchPipeline, session: Session, headers: dict[str, str]) -> None:
        self.client = httpx.Client(base_url=pipe.url, headers=headers, timeout=10)
        self.refused = 0  # answers other than 200/404: e.g. 401 when a key is missing
        self.pending = sorted(session.trades_per_symbol)
        self.expected = session.trades_per_symbol
        start = dt.datetime.combine(SESSION_DATE, dt.time(), tzinfo=dt.UTC)
        self.params = {
            "interval": "1d",
            "start": start.isoformat(),
            "end": (start + dt.timedelta(days=2)).isoformat(),
        }

    def trades(self, symbol: str) -> int:
        try:
            resp = self.client.get(f"/v1/candles/{symbol}", params=self.params)
        except httpx.TransportError:
            return -1
        if resp.status_code != 200:
            self.refused += resp.status_code != 404
            return -1
        return sum(c["trades"] for c in resp.json()["candles"])

    def advance(self) -> int:
        """Check pending symbols in order until one is short; return how many are done.

        Symbols finish at about the same time (the candles flow reads all partitions in
        turn), so this is one request per sample until the last batch lands."""
        while self.pending and self.trades(self.pending[0]) == self.expected[self.pending[0]]:
            self.pending.pop(0)
        return len(self.expected) - len(self.pending)

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # seconds since the process was spawned, taken after the probes
    quotes: int  # md.quotes messages (venue quotes + NBBO)
    trades: int
    status: int
    redis_applied: int
    redis_complete_pairs: int
    candle_symbols: int
    cpu: CpuBook  # pipeline, bench, kafka, redis and the whole machine


# ---------------------------------------------------------------- one run


@dataclass
class RunResult:
    raw_records: int
    preload_s: float
    session: Session
    samples: list[Sample] = field(default_factory=list)
    timed_out: bool = False
    others_before: float = 0.0  # cores other processes used just before the run
    api_refusals: int = 0  # candle reads the API refused (not 200 or 404)
    redis_went_back: bool = False  # stored quotes disappeared: the database was flushed

    def _first(self, done: Callable[[Sample], bool]) -> Sample | None:
        return next((s for s in self.samples if done(s)), None)

    @property
    def started(self) -> Sample | None:
        """The first sample in which normalize had published anything: the clock's zero."""
        return self._first(lambda s: s.quotes + s.trades + s.status > 0)

    @property
    def t0(self) -> float:
        return self.started.t if self.started else math.inf

    def _since_t0(self, done: Callable[[Sample], bool]) -> float | None:
        s = self._first(done)
        return None if s is None else s.t - self.t0

    @property
    def normalize_s(self) -> float | None:
        final, sess = self.samples[-1].quotes, self.session
        return self._since_t0(
            lambda s: (
                s.quotes == final
                and s.trades == sess.trade_messages
                and s.status == sess.status_messages
            )
        )

    @property
    def redis_s(self) -> float | None:
        pairs = len(self.session.quote_times)
        return self._since_t0(lambda s: s.redis_complete_pairs == pairs)

    @property
    def candles_s(self) -> float | None:
        symbols = len(self.session.trades_per_symbol)
        return self._since_t0(lambda s: s.candle_symbols == symbols)

    def cpu(self) -> dict[str, float]:
        """Cores per process group (see harness.cores_between) from t0 until all was done."""
        begin, end = self.started, self._first(lambda s: _all_done(self.session, s))
        if begin is None or end is None or end is begin:
            return {}
        return cores_between(begin.cpu, end.cpu)

    def steady(self, attr: str, total: int) -> float | None:
        """Messages/s between 10 % and 90 % of `total`, interpolated between samples."""
        lo = _crossing(self.samples, attr, 0.1 * total)
        hi = _crossing(self.samples, attr, 0.9 * total)
        if lo is None or hi is None or hi <= lo:
            return None
        return 0.8 * total / (hi - lo)


def _crossing(samples: list[Sample], attr: str, level: float) -> float | None:
    prev: Sample | None = None
    for s in samples:
        value: int = getattr(s, attr)
        if value >= level:
            if prev is None:
                return s.t
            before: int = getattr(prev, attr)
            return prev.t + (s.t - prev.t) * (level - before) / max(1, value - before)
        prev = s
    return None


@dataclass(frozen=True, slots=True)
class RunOptions:
    timeout_s: float  # a run that is not done by then stops and says so
    quiet_s: float  # how long to wait for other processes to go quiet first
    headers: dict[str, str]  # for the API (bench.auth)


def run_once(base: Settings, session: Session, opts: RunOptions) -> RunResult:
    pids = {"bench": [os.getpid()], **service_pids(base)}
    others = wait_quiet(pids, QUIET_CORES, opts.quiet_s)
    pipe = BenchPipeline(base)
    try:
        records, preload_s = preload(pipe, session)
        result = RunResult(records, preload_s, session, others_before=others)
        _measure(pipe, session, result, opts, pids)
        return result
    finally:
        pipe.close()


def _measure(
    pipe: BenchPipeline,
    session: Session,
    result: RunResult,
    opts: RunOptions,
    pids: dict[str, list[int]],
) -> None:
    counter = TopicCounter(pipe.settings.bootstrap, pipe.topics)
    redis_probe = RedisProgress(pipe, session)
    candles = CandleProgress(pipe, session, opts.headers)
    pipe.start()
    probes = _Probes(counter, redis_probe, candles, {"pipeline": pipe.pids(), **pids})
    spawned = time.monotonic()
    try:
        stable_since: float | None = None
        while time.monotonic() - spawned < opts.timeout_s:
            pipe.check_alive()
            prev = result.samples[-1] if result.samples else None
            sample = probes.sample(spawned, session)
            result.samples.append(sample)
            if prev is not None and sample.redis_applied < prev.redis_applied:
                result.redis_went_back = True  # someone else flushed our Redis database
            # md.quotes has no known final count (NBBO updates depend on how the venues
            # interleave), so it must stop growing for a second after everything else is in.
            if not _all_done(session, sample) or prev is None or prev.quotes != sample.quotes:
                stable_since = None
            elif stable_since is None:
                stable_since = sample.t
            elif sample.t - stable_since >= 1.0:
                break
            time.sleep(SAMPLE_S)
        else:
            result.timed_out = True
        result.api_refusals = candles.refused
    finally:
        counter.close()
        probes.candles.close()


@dataclass(frozen=True, slots=True)
class _Probes:
    counter: TopicCounter
    redis: RedisProgress
    candles: CandleProgress
    pids: dict[str, list[int]]

    def sample(self, spawned: float, session: Session) -> Sample:
        counts, t = self.counter.counts(), self.counter.topics
        quotes, trades, status = counts[t.quotes], counts[t.trades], counts[t.status]
        applied, complete = self.redis.applied()
        done = self.candles.advance() if trades >= session.trade_messages else 0
        return Sample(
            time.monotonic() - spawned,
            quotes,
            trades,
            status,
            applied,
            complete,
            done,
            CpuBook.take(self.pids),
        )


def _all_done(session: Session, s: Sample) -> bool:
    return (
        s.trades == session.trade_messages
        and s.status == session.status_messages
        and s.redis_complete_pairs == len(session.quote_times)
        and s.candle_symbols == len(session.trades_per_symbol)
    )


def new_session_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="tapeflow-bench-session-"))
