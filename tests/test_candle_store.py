"""CandleStore on real ClickHouse (embedded chDB in a temporary home) against the reference
rules of schemas.candles.

The late-trade rule checked here: a late trade (its event time in a minute already
written) is always merged; its minute is recomputed from all the minute's trades, so
the candle is the one build_candles gives for the whole set, whatever the arrival order.

chDB lets a process own one data directory at a time; the API's client is a per-process
singleton (infra.clickhouse.shared_clickhouse), so this module closes that singleton, if
another test module opened one, before opening its own client.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.candle_store import INTERVALS, Bar, CandleStore
from infra.clickhouse import ClickHouse, release_shared_clickhouse
from infra.settings import Settings
from schemas.candles import MINUTE_NS, Candle, build_candles, candle_of
from schemas.marketdata import Trade, TradeBreak
from schemas.sale_conditions import eligibility

T0 = 1_795_530_600_000_000_000  # 2026-11-24T14:30:00Z
NY = ZoneInfo("America/New_York")
D = Decimal
_symbols = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> CandleStore:
    release_shared_clickhouse()
    ch = ClickHouse(Settings(home=tmp_path_factory.mktemp("candle-store")))
    ch.migrate()
    yield CandleStore(ch)
    ch.close()


def fresh_symbol() -> str:
    return f"S{next(_symbols):05d}"


def ns_of(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()) * 1_000_000_000


def utc(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC)


def trade(
    symbol: str,
    trade_id: str,
    price: str,
    size: int,
    ns: int,
    venue: str = "iex",
    conditions: tuple[str, ...] = ("@",),
) -> Trade:
    last, volume = eligibility(conditions)
    return Trade(symbol, venue, trade_id, D(price), size, conditions, ns, ns, last, volume)


def brk(t: Trade) -> TradeBreak:
    return TradeBreak(t.symbol, t.venue, t.trade_id, t.price, t.size, t.event_ns + 5, 0)


def expected(events) -> list[Candle]:
    return [c for _, c in sorted(build_candles(events).items())]


# ----------------------------------------------------------------------------- properties

# Sale conditions that count in volume (official prints are covered separately below).
CONDITIONS = [("@",), ("@",), ("@",), ("F",), ("I",), ("T",), ("I", "F"), ("Z",)]


@st.composite
def events_of_one_symbol(draw) -> list[Trade | TradeBreak]:
    keys = draw(
        st.lists(
            st.tuples(st.sampled_from(["iex", "nasdaq"]), st.integers(0, 60).map(str)),
            unique=True,
            min_size=1,
            max_size=40,
        )
    )
    trades = [
        trade(
            "X",
            tid,
            str(D(draw(st.integers(1, 5_000_000))).scaleb(-4)),
            draw(st.integers(1, 10_000)),
            # Spread over a few minutes, boundaries included.
            T0
            + draw(st.sampled_from([0, -1, MINUTE_NS - 1, MINUTE_NS, 0, 17]))
            + draw(st.integers(-2, 3)) * MINUTE_NS,
            venue,
            draw(st.sampled_from(CONDITIONS)),
        )
        for venue, tid in keys
    ]
    broken = draw(st.lists(st.sampled_from(trades), max_size=len(trades), unique=True))
    stray = TradeBreak("X", "iex", "9999", D(1), 1, T0, 0)  # a break of no trade we have
    return trades + [brk(t) for t in broken] + [stray]


def with_symbol(events, symbol: str):
    return [replace(e, symbol=symbol) for e in events]


CH_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@CH_SETTINGS
@given(events_of_one_symbol())
def test_apply_equals_reference_candles(store, events):
    symbol = fresh_symbol()
    events = with_symbol(events, symbol)
    store.apply(events)
    assert store.one_minute(symbol) == expected(events)


@CH_SETTINGS
@given(events_of_one_symbol(), st.randoms(use_true_random=False), st.data())
def test_batches_orders_and_duplicates_give_identical_candles(store, events, rnd, data):
    symbol = fresh_symbol()
    events = with_symbol(events, symbol)
    delivered = events + data.draw(st.lists(st.sampled_from(events), max_size=15))
    rnd.shuffle(delivered)
    cuts = sorted(rnd.sample(range(1, len(delivered)), min(4, len(delivered) - 1)))
    for lo, hi in itertools.pairwise([0, *cuts, len(delivered)]):
        store.apply(delivered[lo:hi])
    assert store.one_minute(symbol) == expected(events)
    # Re-delivering everything (a replay after a restart) changes nothing.
    store.apply(events)
    assert store.one_minute(symbol) == expected(events)


# ----------------------------------------------------------------------------- breaks


def test_a_break_arriving_before_its_trade(store):
    s = fresh_symbol()
    a = trade(s, "1", "10.0000", 100, T0 + 1)
    b = trade(s, "2", "12.0000", 300, T0 + 2)
    store.apply([brk(b)])
    assert store.one_minute(s) == []
    store.apply([a, b])
    assert store.one_minute(s) == [Candle(s, T0, D(10), D(10), D(10), D(10), 100, D(10), 1)]


def test_breaking_every_trade_of_a_minute_removes_the_candle(store):
    s = fresh_symbol()
    a = trade(s, "1", "10.0000", 100, T0 + 1)
    b = trade(s, "2", "11.0000", 100, T0 + 2, venue="nasdaq")
    c = trade(s, "3", "12.0000", 100, T0 + MINUTE_NS)
    store.apply([a, b, c])
    assert len(store.one_minute(s)) == 2
    store.apply([brk(a)])
    assert [x.volume for x in store.one_minute(s)] == [100, 100]
    store.apply([brk(b)])
    assert store.one_minute(s) == expected([a, b, c, brk(a), brk(b)])
    assert [x.start_ns for x in store.one_minute(s)] == [T0 + MINUTE_NS]
    bars = store.candles(s, "1m", utc(T0 - MINUTE_NS), utc(T0 + 10 * MINUTE_NS), 100)
    assert [b.start for b in bars] == [utc(T0 + MINUTE_NS)]
    [hour] = store.candles(s, "1h", utc(T0 - 3_600_000_000_000), utc(T0 + 3_600_000_000_000), 9)
    assert (hour.volume, hour.trades, hour.open) == (100, 1, D(12))
    # The broken trades delivered again stay broken.
    store.apply([a, b])
    assert [x.start_ns for x in store.one_minute(s)] == [T0 + MINUTE_NS]


def test_official_prints_alongside_regular_trades_count_nowhere(store):
    s = fresh_symbol()
    events = [
        trade(s, "1", "10.0000", 100, T0 + 5),
        trade(s, "2", "99.0000", 5000, T0 + 1, conditions=("M",)),
        trade(s, "3", "1.0000", 5000, T0 + 9, conditions=("Q",)),
    ]
    store.apply(events)
    assert store.one_minute(s) == [Candle(s, T0, D(10), D(10), D(10), D(10), 100, D(10), 1)]


def test_a_minute_of_official_prints_only_has_no_candle(store):
    s = fresh_symbol()
    events = [trade(s, "1", "99.0000", 5000, T0 + 1, conditions=("M",))]
    store.apply(events)
    assert store.one_minute(s) == expected(events) == []


def test_apply_accepts_any_iterable(store):
    s = fresh_symbol()
    a = trade(s, "1", "10.0000", 100, T0 + 1)
    b = trade(s, "2", "12.0000", 100, T0 + 2)
    store.apply(e for e in [a, b, brk(b)])
    assert store.one_minute(s) == expected([a, b, brk(b)])


# ----------------------------------------------------------------------------- late trades


def test_late_trades_are_merged_and_their_minute_recomputed(store):
    s = fresh_symbol()
    first = [
        trade(s, str(i), f"{20 + i}.0000", 100, T0 + (i + 1) * 1_000_000_000) for i in range(5)
    ]
    later_minute = [trade(s, "100", "30.0000", 100, T0 + 3 * MINUTE_NS)]
    store.apply(first + later_minute)
    before = store.one_minute(s)
    # Arrives after both minutes are written, with an event time inside the first one,
    # earlier than its open, lower than its low and an odd lot at its high.
    late = [
        trade(s, "7", "15.0000", 50, T0 + 500_000_000, venue="nasdaq"),
        trade(s, "8", "40.0000", 10, T0 + 2_000_000_000, venue="nasdaq", conditions=("I",)),
    ]
    store.apply(late)
    after = store.one_minute(s)
    assert after == expected(first + later_minute + late)
    assert after[1] == before[1], "other minutes untouched"
    assert (after[0].open, after[0].low, after[0].high) == (D(15), D(15), D(24))
    assert (after[0].volume, after[0].trades) == (before[0].volume + 60, 7)


# ----------------------------------------------------------------------------- rollups


def ny_bucket(ns: int, minutes: int) -> int:
    """Start (ns) of the bucket a minute belongs to, on New York clock time."""
    local = utc(ns).astimezone(NY)
    if minutes == 1440:
        start = datetime(local.year, local.month, local.day, tzinfo=NY)
    else:
        of_day = local.hour * 60 + local.minute
        start = datetime(local.year, local.month, local.day, tzinfo=NY) + timedelta(
            minutes=of_day - of_day % minutes
        )
    return int(start.timestamp()) * 1_000_000_000


def reference_rollup(trades: list[Trade], minutes: int) -> list[Candle]:
    """Candles of longer buckets straight from the trades, by the same rules as a minute."""
    buckets: dict[int, list[Trade]] = {}
    for t in trades:
        buckets.setdefault(ny_bucket(t.event_ns, minutes), []).append(t)
    out = [candle_of(trades[0].symbol, b, ts) for b, ts in sorted(buckets.items())]
    return [c for c in out if c is not None]


def as_candle(bar: Bar) -> Candle:
    return Candle(
        bar.symbol,
        int(bar.start.timestamp()) * 1_000_000_000,
        bar.open,
        bar.high,
        bar.low,
        bar.close,
        bar.volume,
        bar.vwap,
        bar.trades,
    )


@pytest.fixture(scope="module")
def session(store) -> tuple[str, list[Trade]]:
    """Two days of one symbol: New York evening and night, and a session around the open."""
    s = fresh_symbol()
    rnd = random.Random(20261124)
    times = [
        ns_of("2026-11-23T14:30:00Z"),
        ns_of("2026-11-24T04:30:00Z"),  # 23:30 in New York: the 23rd's day
        ns_of("2026-11-24T04:59:59Z"),
        ns_of("2026-11-24T05:00:00Z"),  # New York midnight: the 24th's day
        ns_of("2026-11-25T04:59:30Z"),
        ns_of("2026-11-25T05:00:30Z"),
    ]
    times += [T0 - 20 * MINUTE_NS + rnd.randrange(150 * MINUTE_NS) for _ in range(400)]
    conditions = [("@",)] * 6 + [("I",), ("F",), ("T",)]
    trades = [
        trade(
            s,
            str(i),
            str(D(rnd.randrange(1_000_000, 1_100_000)).scaleb(-4)),
            rnd.randrange(1, 1000),
            ns,
            rnd.choice(["iex", "nasdaq"]),
            rnd.choice(conditions),
        )
        for i, ns in enumerate(times)
    ]
    # A bucket opening with a minute of odd lots only: its open comes from a later minute.
    trades.append(trade(s, "odd", "50.0000", 7, ns_of("2026-11-24T16:00:05Z"), "iex", ("I",)))
    trades.append(trade(s, "reg", "51.0000", 7, ns_of("2026-11-24T16:01:05Z"), "iex"))
    # Official prints next to regular trades count nowhere.
    trades.append(trade(s, "close", "99.0000", 9, ns_of("2026-11-24T16:01:06Z"), "iex", ("M",)))
    store.apply(trades)
    return s, trades


LO = datetime(2026, 11, 23, tzinfo=UTC)
HI = datetime(2026, 11, 26, tzinfo=UTC)


@pytest.mark.parametrize("interval", list(INTERVALS))
def test_rollups_equal_reference_buckets(store, session, interval):
    s, trades = session
    bars = store.candles(s, interval, LO, HI, 10_000)
    assert [as_candle(b) for b in bars] == reference_rollup(trades, INTERVALS[interval])
    minutes = store.one_minute(s)
    assert sum(b.volume for b in bars) == sum(c.volume for c in minutes)
    assert sum(b.trades for b in bars) == sum(c.trades for c in minutes)
    for bar in bars:
        start_ns = as_candle(bar).start_ns
        inside = [c for c in minutes if ny_bucket(c.start_ns, INTERVALS[interval]) == start_ns]
        opens = [c.open for c in inside if c.open is not None]
        closes = [c.close for c in inside if c.close is not None]
        assert bar.open == (opens[0] if opens else None), "open is the first minute's open"
        assert bar.close == (closes[-1] if closes else None), "close is the last minute's close"


def test_daily_buckets_are_new_york_days(store, session):
    s, _ = session
    days = [b.start for b in store.candles(s, "1d", LO, HI, 100)]
    assert days == [
        datetime(2026, 11, 23, 5, tzinfo=UTC),
        datetime(2026, 11, 24, 5, tzinfo=UTC),
        datetime(2026, 11, 25, 5, tzinfo=UTC),
    ]
    assert all(d.astimezone(NY).time() == datetime.min.time() for d in days)
    # The trade at 04:30Z on the 24th is 23:30 on the 23rd in New York.
    t = fresh_symbol()
    store.apply(
        [
            trade(t, "1", "10.0000", 100, ns_of("2026-11-24T04:30:00Z")),
            trade(t, "2", "20.0000", 200, ns_of("2026-11-24T05:00:00Z")),
        ]
    )
    bars = store.candles(t, "1d", LO, HI, 100)
    assert [(b.start, b.volume, b.open) for b in bars] == [
        (datetime(2026, 11, 23, 5, tzinfo=UTC), 100, D(10)),
        (datetime(2026, 11, 24, 5, tzinfo=UTC), 200, D(20)),
    ]


def test_hourly_buckets_are_clock_hours(store, session):
    s, _ = session
    bars = store.candles(s, "1h", LO, HI, 100)
    assert len(bars) > 3
    assert all((b.start.minute, b.start.second) == (0, 0) for b in bars)
    for interval in ("5m", "15m"):
        step = INTERVALS[interval]
        starts = [b.start for b in store.candles(s, interval, LO, HI, 1000)]
        assert all(x.minute % step == 0 and x.second == 0 for x in starts)


def test_a_bucket_is_returned_whole_when_its_start_is_in_range(store, session):
    s, trades = session
    lo = datetime(2026, 11, 24, 14, 45, tzinfo=UTC)  # inside the 14:00 hour: that one is out
    hi = datetime(2026, 11, 24, 15, 30, tzinfo=UTC)  # inside the 15:00 hour: that one is whole
    [bar] = store.candles(s, "1h", lo, hi, 100)
    assert bar.start == datetime(2026, 11, 24, 15, tzinfo=UTC)
    [want] = [c for c in reference_rollup(trades, 60) if c.start_ns == as_candle(bar).start_ns]
    assert as_candle(bar) == want
    minutes = store.candles(s, "1m", lo, hi, 10_000)
    assert minutes and all(lo <= b.start < hi for b in minutes)


def test_limit_keeps_the_oldest(store, session):
    s, _ = session
    every = store.candles(s, "5m", LO, HI, 10_000)
    assert store.candles(s, "5m", LO, HI, 3) == every[:3]


def test_known_symbol(store, session):
    s, _ = session
    assert store.known_symbol(s)
    assert not store.known_symbol(fresh_symbol())
