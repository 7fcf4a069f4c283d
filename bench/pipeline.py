"""Pipeline benchmark: backlog throughput and latency at a fixed rate, on this machine.

    .venv/bin/python -m bench.pipeline [--repeat 3] [--symbols 50] [--minutes 100]
                                       [--rate 10000] [--seconds 20] [--part all]

Needs the services (`tapeflow up`). Every run gets its own pipeline: a fresh Kafka
topic namespace, Redis database, home folder (chDB, recovery) and API port, and its
own `python -m infra.cli run` process, stopped and cleaned up afterwards. The method
of each part is in the docstrings of bench.throughput and bench.latency.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from collections.abc import Callable

from bench import harness
from bench.auth import api_headers
from bench.harness import services_ready
from bench.latency import IDLE_S, LatencyResult, Plan, run_latency
from bench.machine import machine_lines, median, percentile
from bench.throughput import (
    QUIET_CORES,
    RunOptions,
    RunResult,
    Session,
    make_session,
    new_session_dir,
    run_once,
)
from infra.settings import Settings

TARGET_QUOTES_PER_S = 50_000
TARGET_P99_MS = 50.0
TARGET_RATE = 10_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("all", "throughput", "latency"), default="all")
    p.add_argument(
        "--split", action="store_true", help="`tapeflow run --split` (flows in several processes)"
    )
    t = p.add_argument_group("throughput (backlog drain of a simulated session)")
    t.add_argument("--symbols", type=int, default=50, help="symbols in the session")
    t.add_argument("--minutes", type=int, default=100, help="session length (100: ~200k events)")
    t.add_argument("--seed", type=int, default=7)
    t.add_argument("--repeat", type=int, default=3, help="runs, each with a fresh pipeline")
    t.add_argument("--run-timeout", type=float, default=240.0, help="seconds per run at most")
    lat = p.add_argument_group("latency (fixed offered rate)")
    lat.add_argument("--rate", type=int, default=TARGET_RATE, help="quotes per second offered")
    lat.add_argument("--seconds", type=float, default=20.0, help="how long to offer them")
    lat.add_argument("--latency-symbols", type=int, default=100, help="round-robin over these")
    lat.add_argument("--warmup", type=float, default=2.0, help="seconds left out at the start")
    p.add_argument(
        "--quiet-timeout",
        type=float,
        default=60.0,
        help="wait up to this long before each run for other processes to go quiet",
    )
    args = p.parse_args(argv)
    if args.repeat < 1 or args.symbols < 1 or args.minutes < 1 or args.latency_symbols < 1:
        p.error("--repeat, --symbols, --minutes and --latency-symbols must be at least 1")
    if args.rate < 1 or args.warmup >= args.seconds:
        p.error("--rate must be positive and --warmup shorter than --seconds")
    return args


def say(line: str = "") -> None:
    print(line, flush=True)


def _n(x: float | None, unit: str = "") -> str:
    if x is None or math.isnan(x) or math.isinf(x):
        return "—"
    return f"{x:,.0f}{unit}"


def _s(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def _c(x: float | None) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.2f}"


def _rate(count: int, seconds: float | None) -> float | None:
    return count / seconds if seconds else None


# ---------------------------------------------------------------- part 1


def describe_session(s: Session) -> None:
    k = s.kinds
    say(
        f"session: {len(s.trades_per_symbol)} symbols with trades, {s.events:,} events = "
        f"{k['quote']:,} venue quotes + {k['trade']:,} trades + {k['break']:,} breaks + "
        f"{s.status_messages:,} status/security/system, over iex (TOPS) and nasdaq (JSON)"
    )


def run_row(i: int, r: RunResult) -> tuple[str, dict[str, float | None]]:
    s = r.session
    norm, red, cand = r.normalize_s, r.redis_s, r.candles_s
    cpu = r.cpu()
    nan = math.nan
    figures = {
        "raw": _rate(r.raw_records, norm),
        "events": _rate(s.events, norm),
        "mdquotes": _rate(r.samples[-1].quotes, norm),
        "redis": _rate(s.venue_quotes, red),
        "redis_steady": r.steady("redis_applied", s.venue_quotes),
        "trades": _rate(s.trade_messages, cand),
        "cores": cpu.get("pipeline", nan),
        "services": cpu.get("kafka", nan) + cpu.get("redis", nan),
        "others": cpu.get("others", nan),
        "machine": cpu.get("machine", nan),
    }
    cells = [
        str(i),
        f"{r.t0:.1f}",
        _n(r.raw_records / r.preload_s),
        _s(norm),
        _n(figures["raw"]),
        _n(figures["events"]),
        _n(figures["mdquotes"]),
        _s(red),
        _n(figures["redis"]),
        _n(figures["redis_steady"]),
        _s(cand),
        _n(figures["trades"]),
        _c(figures["cores"]),
        _c(figures["services"]),
        _c(figures["machine"]),
        _c(figures["others"]),
    ]
    line = _table_line(cells) + ("  TIMED OUT" if r.timed_out else "")
    if r.redis_went_back:
        line += "  (quotes vanished from our Redis database mid-run: flushed by another process?)"
    if r.api_refusals:
        line += f"  (the API refused {r.api_refusals} candle reads)"
    if figures["others"] is not None and figures["others"] >= QUIET_CORES:
        line += "  (other processes were busy: not representative)"
    if r.others_before >= QUIET_CORES:
        line += f"  (machine not quiet before: others used {r.others_before:.2f} cores)"
    return line, figures


WIDTHS = (3, 5, 8, 0, 5, 8, 8, 9, 0, 5, 8, 8, 0, 5, 8, 0, 5, 5, 5, 5)
# One word per column ('_' is a space, '-' an empty cell), '|' between the groups.
THROUGHPUT_HEADER = [
    "run start preload | done raw_in events md.quotes | done venue_q steady | done trades"
    " | pipe k+r all other",
    "- s rec/s | s rec/s /s /s | s /s /s | s /s | cores cores cores cores",
]
THROUGHPUT_LEGEND = (
    "start: spawn -> first normalize output; preload: replay into md.raw.* before start;\n"
    "normalize: raw in / events parsed / md.quotes (venue + NBBO) out until md.quotes, "
    "md.trades, md.status are complete;\n"
    "quotes: venue quotes applied to Redis until every (symbol, venue) holds its last quote "
    "(steady = 10-90 % slope);\n"
    "candles: trades + breaks until every symbol's 1d candle counts all its trades (via API);\n"
    "CPU from the first output until all is done: pipe = the `tapeflow run` process, k+r = "
    "Kafka + Redis,\nall = whole machine, other = all - pipe - k+r - this benchmark process"
)


def _table_line(cells: list[str]) -> str:
    """Cells laid out in WIDTHS, with a '|' between the groups."""
    out, k = [], 0
    for width in WIDTHS:
        if width == 0:
            out.append("|")
            continue
        out.append(cells[k].rjust(width) if k < len(cells) else "")
        k += 1
    return " ".join(out)


def _header_line(words: str) -> str:
    labels = [w.replace("_", " ").replace("-", "") for w in words.split()]
    return " ".join(
        "|" if w == 0 else label.rjust(w) for w, label in zip(WIDTHS, labels, strict=True)
    )


SUMMARY = [
    ("raw Kafka records in (normalize)", "raw", "/s"),
    ("events parsed (normalize)", "events", "/s"),
    ("md.quotes out incl. NBBO (normalize)", "mdquotes", "/s"),
    ("venue quotes into Redis, whole drain", "redis", "/s"),
    ("venue quotes into Redis, steady 10-90 %", "redis_steady", "/s"),
    ("trades + breaks into ClickHouse", "trades", "/s"),
    ("CPU, pipeline process (cores)", "cores", ""),
    ("CPU, Kafka + Redis (cores)", "services", ""),
    ("CPU, whole machine (cores)", "machine", ""),
    ("CPU, other processes (cores)", "others", ""),
]


def summarize(rows: list[dict[str, float | None]]) -> dict[str, float]:
    say(f"\nacross {len(rows)} runs: median [min .. max]  max/min")
    medians: dict[str, float] = {}
    for label, key, unit in SUMMARY:
        values = [v for r in rows if (v := r[key]) is not None and not math.isnan(v)]
        if not values:
            say(f"  {label:<40} —")
            continue
        med, lo, hi = median(values), min(values), max(values)
        medians[key] = med
        fmt: Callable[[float], str] = _n if unit else _c
        spread = f"x{hi / lo:.2f}" if lo > 0 else ""
        say(f"  {label:<40} {fmt(med):>8}{unit} [{fmt(lo)} .. {fmt(hi)}]  {spread}")
    return medians


def part_throughput(base: Settings, args: argparse.Namespace) -> dict[str, float]:
    say("\n== 1. Throughput: draining a backlog ==")
    out_dir = new_session_dir()
    try:
        started = time.perf_counter()
        session = make_session(out_dir, symbols=args.symbols, minutes=args.minutes, seed=args.seed)
        say(
            f"simulated {args.symbols} symbols x {args.minutes} min (seed {args.seed}) "
            f"in {time.perf_counter() - started:.1f} s"
        )
        describe_session(session)
        say(
            "each run: fresh pipeline; the recordings replayed flat out into md.raw.* first, "
            "then `tapeflow run` started;\n"
            "times (s) are from the first normalize output, sampled every 0.2 s"
        )
        say(THROUGHPUT_LEGEND)
        say("\n".join(["", *(_header_line(h) for h in THROUGHPUT_HEADER)]))
        rows = []
        with api_headers(base) as headers:
            opts = RunOptions(args.run_timeout, args.quiet_timeout, headers)
            for i in range(1, args.repeat + 1):
                line, figures = run_row(i, run_once(base, session, opts))
                say(line)
                rows.append(figures)
        return summarize(rows)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


# ---------------------------------------------------------------- part 2


def part_latency(base: Settings, args: argparse.Namespace) -> float:
    plan = Plan(args.rate, args.seconds, args.latency_symbols, args.warmup)
    say(f"\n== 2. Latency at {plan.rate:,} quotes/s offered ==")
    result = run_latency(base, plan, args.quiet_timeout)
    return report_latency(result)


def report_latency(r: LatencyResult) -> float:
    plan, st = r.plan, r.stats
    lat = r.latencies_ms()
    total = lat["total"]
    counted = plan.total - plan.warm
    say(
        f"offered: {plan.total:,} JSON quote lines, 1 per Kafka message, round-robin over "
        f"{plan.symbols} symbols into md.raw.nasdaq, {plan.seconds:g} s; achieved "
        f"{(plan.total - 1) / st.seconds:,.0f}/s, in 1 ms bursts (sender at most "
        f"{st.max_behind} messages behind schedule)"
    )
    say(
        f"warm-up: quotes sent in the first {plan.warmup_s:g} s ({plan.warm:,}) are left out; "
        f"drained: {'yes' if r.drained else 'NO (gave up after 30 s)'}"
    )
    say(
        f"observed: {len(total):,} of {counted:,} venue quotes published on quotes:* "
        f"({len(total) / counted:.1%}); the rest were conflated by the quotes flow "
        f"(newest per symbol and batch); {r.received.nbbo:,} NBBO messages skipped"
    )
    say("latency (ms)                    p50     p90     p99   p99.9     max")
    for key, label in LATENCY_ROWS:
        cells = "".join(f"{percentile(lat[key], q):8.1f}" for q in (50, 90, 99, 99.9, 100))
        say(f"  {label:<28}{cells}")
    say(
        "p99 per second of sending (ms, warm-up included): "
        + " ".join(f"{x:.0f}" for x in r.per_second_p99())
    )
    say(
        "CPU while measured (cores): "
        + ", ".join(f"{name} {cores:.2f}" for name, cores in st.cpu.items())
        + f"; other processes just before the run {r.others_before:.2f}"
    )
    say(
        f"CPU idle, pipeline up and no traffic for {IDLE_S:g} s (cores): "
        + ", ".join(f"{name} {cores:.2f}" for name, cores in r.idle.items())
    )
    others = st.cpu.get("others", 0.0)
    if others >= QUIET_CORES:
        say(
            f"WARNING: other processes used {others:.2f} cores while this was measured; "
            "these figures are not representative of the pipeline alone"
        )
    return percentile(total, 99)


LATENCY_ROWS = [
    ("total", "send -> pub/sub receive"),
    ("to_parse", "  send -> normalize parse"),
    ("after_parse", "  parse -> pub/sub receive"),
]


# ---------------------------------------------------------------- main


def verdict(label: str, value: str, ok: bool | None) -> None:
    mark = "n/a " if ok is None else ("PASS" if ok else "MISS")
    say(f"  {mark}  {label}: {value}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.split:
        harness.RUN_ARGS[:] = ["--split"]
    base = Settings()
    server = services_ready(base)
    if server is None:
        return 2
    say("Tapeflow pipeline benchmark")
    say("\n".join(["", *machine_lines(server)]))
    say(
        "\npipeline: `python -m infra.cli run` = API + flows normalize, quotes, candles "
        + (
            "(--split: API + candles in one process, normalize and quotes in one each)"
            if args.split
            else "(1 Bytewax worker each, threads of one process)"
        )
    )
    medians: dict[str, float] = {}
    p99 = math.nan
    if args.part in ("all", "throughput"):
        medians = part_throughput(base, args)
    if args.part in ("all", "latency"):
        p99 = part_latency(base, args)
    say("\n== Targets ==")
    sustained = medians.get("redis")
    verdict(
        f">= {TARGET_QUOTES_PER_S:,} normalized quote updates/s sustained into Redis "
        "(median of runs, whole drain)",
        f"{_n(sustained)}/s",
        None if sustained is None else sustained >= TARGET_QUOTES_PER_S,
    )
    at_target = args.rate == TARGET_RATE
    verdict(
        f"p99 < {TARGET_P99_MS:g} ms at {TARGET_RATE:,} quotes/s"
        + ("" if at_target else f" (ran at {args.rate:,}/s)"),
        f"{p99:.1f} ms",
        None if math.isnan(p99) or not at_target else p99 < TARGET_P99_MS,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
