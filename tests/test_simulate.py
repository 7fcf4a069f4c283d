"""The simulated session, the recordings it writes, and the checked-in sample."""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from infra.recording import Record, RecordingWriter, format_of, read_recording
from infra.simulate import (
    RECORDING_NAMES,
    read_expected,
    session_window,
    simulate_session,
    universe,
    write_session,
)
from schemas import iex_tops, json_feed
from schemas.marketdata import Event, Malformed, Quote, Status, Trade, TradeBreak

DATE = dt.date(2026, 11, 24)
OPEN_NS = 1_795_530_600_000_000_000  # 2026-11-24 09:30 New York = 14:30 UTC
MINUTE = 60 * 10**9
SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "session-2026-11-24"
SAMPLE_ARGS: dict[str, Any] = {
    "date": DATE,
    "symbols": 20,
    "seed": 20261124,
    "minutes": 30,
    "start": "09:30",
    "malformed_rate": 0.001,
}


@pytest.fixture(scope="module")
def session() -> dict[str, list[Event]]:
    return simulate_session(date=DATE, symbols=16, seed=11, minutes=30)


@pytest.fixture(scope="module")
def premarket() -> dict[str, list[Event]]:
    return simulate_session(date=DATE, symbols=6, seed=5, minutes=150, start="08:00")


def of(events: list[Event], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


# ---------------------------------------------------------------- determinism and clock


def test_deterministic_for_a_seed(session: dict[str, list[Event]]) -> None:
    assert simulate_session(date=DATE, symbols=16, seed=11, minutes=30) == session
    other = simulate_session(date=DATE, symbols=16, seed=12, minutes=30)
    assert other != session


def test_times_strictly_increase_and_start_at_the_open(session: dict[str, list[Event]]) -> None:
    for venue, events in session.items():
        times = [e.event_ns for e in events]
        assert all(a < b for a, b in itertools.pairwise(times)), venue
        assert times[0] >= OPEN_NS
        assert all(e.receive_ns == e.event_ns for e in events)
    assert session["iex"][0].event_ns == OPEN_NS  # System Event O at 09:30:00 NY
    window = session_window(DATE, "09:30", 30)
    assert window.end_ns == OPEN_NS + 30 * MINUTE


def test_new_york_time_follows_daylight_saving() -> None:
    july = session_window(dt.date(2026, 7, 15), "09:30", None)
    assert json_feed.format_time(july.start_ns) == "2026-07-15T13:30:00.000000000Z"
    assert json_feed.format_time(july.end_ns) == "2026-07-15T20:00:00.000000000Z"
    with pytest.raises(ValueError):
        session_window(DATE, "03:00", 10)


def test_two_venues(session: dict[str, list[Event]]) -> None:
    assert set(session) == {"iex", "nasdaq"}
    for venue, events in session.items():
        assert {e.venue for e in events} == {venue}


# ---------------------------------------------------------------- realism


def test_iex_starts_with_system_events_and_the_directory(session: dict[str, list[Event]]) -> None:
    iex = session["iex"]
    symbols = [sym for sym, _ in universe(16)]
    assert [e.kind for e in iex[:3]] == ["system"] * 3
    assert [e.code for e in iex[:3]] == ["O", "S", "R"]  # type: ignore[union-attr]
    directory = iex[3 : 3 + len(symbols)]
    assert [(e.kind, e.symbol) for e in directory] == [("security", s) for s in symbols]
    assert all(e.round_lot == 100 and not e.test for e in directory)  # type: ignore[union-attr]
    assert not [e for e in session["nasdaq"] if e.kind in ("system", "security")]


def test_real_looking_symbols_extended_deterministically() -> None:
    names = [sym for sym, _ in universe(60)]
    assert names[:4] == ["AAPL", "NVDA", "TSLA", "MSFT"]
    assert len(set(names)) == 60
    assert all(1 <= len(n) <= 8 and n.replace(".", "").isalnum() for n in names)
    assert universe(60) == universe(60)
    assert [sym for sym, _ in universe(45)] == names[:45]


def test_quotes_are_on_tick_with_tight_spreads(session: dict[str, list[Event]]) -> None:
    quotes = [q for events in session.values() for q in of(events, Quote)]
    assert quotes
    for q in quotes:
        tick = Decimal("0.01") if q.bid_price >= 1 else Decimal("0.0001")
        assert q.bid_price % tick == 0
        assert q.ask_price % (Decimal("0.01") if q.ask_price >= 1 else tick) == 0
        if q.ask_price < 1 or q.bid_price >= 1:  # (crossing $1 rounds the ask up)
            assert q.bid_price < q.ask_price <= q.bid_price + 3 * tick  # 1-3 ticks
        assert q.bid_size > 0 and q.ask_size > 0
    sizes = [q.bid_size for q in quotes]
    assert sum(s % 100 == 0 for s in sizes) > 0.8 * len(sizes)
    assert any(s % 100 for s in sizes)
    sub_dollar = [q for q in quotes if q.symbol == "FFIE"]
    assert sub_dollar and all(q.ask_price < 1 for q in sub_dollar)


def test_venues_quote_the_same_symbols_differently(session: dict[str, list[Event]]) -> None:
    by_venue = {
        venue: {(q.symbol, q.bid_price, q.ask_price, q.bid_size) for q in of(events, Quote)}
        for venue, events in session.items()
    }
    symbols = {venue: {s for s, *_ in quotes} for venue, quotes in by_venue.items()}
    assert symbols["iex"] == symbols["nasdaq"] == {s for s, _ in universe(16)}
    assert by_venue["iex"] != by_venue["nasdaq"]
    last: dict[str, dict[str, Quote]] = {"iex": {}, "nasdaq": {}}
    differing = 0
    for event in sorted(
        (e for events in session.values() for e in of(events, Quote)), key=lambda e: e.event_ns
    ):
        last[event.venue][event.symbol] = event
        other = last["nasdaq" if event.venue == "iex" else "iex"].get(event.symbol)
        if other and (other.bid_price, other.ask_price) != (event.bid_price, event.ask_price):
            differing += 1
    assert differing > 100


def test_trades_print_within_the_venues_quote(session: dict[str, list[Event]]) -> None:
    for venue, events in session.items():
        quote: dict[str, Quote] = {}
        trades = 0
        for event in events:
            if isinstance(event, Quote):
                quote[event.symbol] = event
            elif isinstance(event, Trade):
                q = quote[event.symbol]
                assert q.bid_price <= event.price <= q.ask_price, event
                trades += 1
        assert trades > 100, venue


def test_trade_sizes_and_conditions(session: dict[str, list[Event]]) -> None:
    for events in session.values():
        trades = of(events, Trade)
        odd = [t for t in trades if t.size < 100]
        assert 0.05 * len(trades) < len(odd) < 0.35 * len(trades)
        assert all("I" in t.conditions and not t.updates_last for t in odd)
        assert all("T" not in t.conditions for t in trades)  # regular hours only
        sweeps = [t for t in trades if "F" in t.conditions and "I" not in t.conditions]
        assert sweeps and all(t.updates_last and t.updates_volume for t in sweeps)
        assert sum(t.conditions == ("@",) for t in trades) > 0.5 * len(trades)
        assert len({t.trade_id for t in trades}) == len(trades)


def test_iex_conditions_match_tops_flag_order(session: dict[str, list[Event]]) -> None:
    # TOPS can only say what its flags say: "@" alone, or flag letters in bit order.
    for trade in of(session["iex"], Trade):
        assert trade.conditions == ("@",) or "@" not in trade.conditions
    for trade in of(session["nasdaq"], Trade):
        assert trade.conditions[0] == "@"


def test_extended_hours_prints(premarket: dict[str, list[Event]]) -> None:
    for venue, events in premarket.items():
        trades = of(events, Trade)
        before = [t for t in trades if t.event_ns < OPEN_NS]
        after = [t for t in trades if t.event_ns >= OPEN_NS]
        assert 0 < len(before) < len(after) / 4, venue  # a few, thin pre-market
        assert all("T" in t.conditions and not t.updates_last for t in before)
        assert all("T" not in t.conditions for t in after)
    codes = [(e.code, e.event_ns) for e in premarket["iex"] if e.kind == "system"]
    assert [c for c, _ in codes] == ["O", "S", "R"]
    assert codes[2][1] == OPEN_NS  # R exactly at 09:30


def test_open_burst(session: dict[str, list[Event]]) -> None:
    for venue, events in session.items():
        per_minute = Counter((e.event_ns - OPEN_NS) // MINUTE for e in events)
        later = sorted(per_minute[m] for m in range(1, 30))
        median = later[len(later) // 2]
        assert per_minute[0] > 2 * median, venue


def test_one_symbol_halts_then_resumes_on_both_venues(session: dict[str, list[Event]]) -> None:
    halted_symbols = set()
    for venue, events in session.items():
        halts = [s for s in of(events, Status) if s.state == "halted"]
        assert len(halts) == 1, venue
        halt = halts[0]
        halted_symbols.add(halt.symbol)
        resume = next(
            s
            for s in of(events, Status)
            if s.symbol == halt.symbol and s.event_ns > halt.event_ns and s.state == "trading"
        )
        assert 3 * MINUTE <= resume.event_ns - halt.event_ns <= 5 * MINUTE + 10**7
        quiet = [
            e
            for e in events
            if e.symbol == halt.symbol  # type: ignore[union-attr]
            and halt.event_ns < e.event_ns < resume.event_ns
            and isinstance(e, Trade | Quote)
        ]
        assert quiet == [], venue
    assert len(halted_symbols) == 1
    nasdaq_halt = next(s for s in of(session["nasdaq"], Status) if s.state == "halted")
    assert nasdaq_halt.reason == "Trading halt"


def test_trade_breaks_cancel_earlier_trades(session: dict[str, list[Event]]) -> None:
    for venue, events in session.items():
        trades = {t.trade_id: t for t in of(events, Trade)}
        breaks = of(events, TradeBreak)
        assert 1 <= len(breaks) <= 4, venue
        for b in breaks:
            trade = trades[b.trade_id]
            assert (trade.symbol, trade.price, trade.size) == (b.symbol, b.price, b.size)
            assert trade.event_ns < b.event_ns


def test_full_day_when_minutes_is_none() -> None:
    day = simulate_session(date=DATE, symbols=1, seed=1, start="15:50")
    codes = [e.code for e in day["iex"] if e.kind == "system"]  # type: ignore[union-attr]
    assert codes == ["O", "S", "R", "M", "E", "C"]
    last_trade = max(e.event_ns for e in day["nasdaq"] if e.kind == "trade")
    assert last_trade < OPEN_NS + 390 * MINUTE  # ends at 16:00


# ---------------------------------------------------------------- recordings


def parse_record(record: Record, venue: str, fmt: str) -> list[Event | Malformed]:
    if fmt == "json":
        return json_feed.parse_line(record.payload, venue, record.event_ns)
    return iex_tops.parse_segment(record.payload, venue, record.event_ns)


def read_back(paths: dict[str, Path]) -> dict[str, tuple[list[Event], list[Malformed]]]:
    out = {}
    for venue, path in paths.items():
        good: list[Event] = []
        bad: list[Malformed] = []
        previous = 0
        for record in read_recording(path):
            assert record.event_ns >= previous  # pacing never goes backwards
            previous = record.event_ns
            for item in parse_record(record, venue, format_of(path)):
                if isinstance(item, Malformed):
                    bad.append(item)
                else:
                    assert item.receive_ns == record.event_ns
                    good.append(replace(item, receive_ns=item.event_ns))
        out[venue] = (good, bad)
    return out


def test_recording_round_trip_with_malformed(tmp_path: Path) -> None:
    args: dict[str, Any] = {"date": DATE, "symbols": 8, "seed": 3, "minutes": 10}
    paths = write_session(tmp_path, **args, malformed_rate=0.02)
    assert {v: p.name for v, p in paths.items()} == RECORDING_NAMES
    events = simulate_session(**args)
    expected = read_expected(tmp_path)
    for venue, (good, bad) in read_back(paths).items():
        assert good == events[venue], venue
        assert len(bad) == expected[venue]["malformed"] > 0, venue
        counts = Counter(e.kind for e in good)
        assert {k: v for k, v in expected[venue].items() if k != "malformed"} == counts
        prefix = "json: " if venue == "nasdaq" else ("tops: ", "iex_tp: ")
        assert all(m.reason.startswith(prefix) and m.venue == venue for m in bad)


def test_malformed_kinds_are_varied(tmp_path: Path) -> None:
    paths = write_session(tmp_path, date=DATE, symbols=4, seed=9, minutes=5, malformed_rate=0.05)
    parsed = read_back(paths)
    reasons = {m.reason.split(" ")[1] for m in parsed["nasdaq"][1]}
    assert {"invalid", "missing", "unknown", "negative"} <= reasons
    tops = {m.reason for m in parsed["iex"][1]}
    assert any("unknown message type" in r for r in tops)
    assert any("overruns the payload" in r for r in tops)
    assert any("protocol id" in r for r in tops)


def test_recording_keys_and_times(tmp_path: Path) -> None:
    paths = write_session(tmp_path, date=DATE, symbols=3, seed=2, minutes=2)
    json_records = list(read_recording(paths["nasdaq"]))
    assert {r.key for r in json_records} == {b"AAPL", b"NVDA", b"TSLA"}
    assert json_records[0].event_ns >= OPEN_NS
    tops_records = list(read_recording(paths["iex"]))
    assert all(r.key is None for r in tops_records)
    assert [r.event_ns for r in tops_records] == [
        iex_tops.segment_send_time(r.payload) for r in tops_records
    ]
    counts = [iex_tops.segment_message_count(r.payload) for r in tops_records]
    assert max(counts) > 1  # several messages per segment
    assert read_expected(tmp_path)["iex"]["malformed"] == 0


def test_recording_writer_and_formats(tmp_path: Path) -> None:
    assert format_of("a/b.jsonl") == "json"
    assert format_of(Path("x.TOPS")) == "tops"
    with pytest.raises(ValueError):
        format_of("x.csv")
    path = tmp_path / "r.jsonl"
    with RecordingWriter(path) as writer:
        writer.write(b'{"T":"s","S":"A","sc":"T","t":"2026-11-24T14:30:00Z"}')
        writer.write(b"{broken")
        with pytest.raises(ValueError):
            writer.write(b"two\nlines")
    with RecordingWriter(path, append=True) as writer:
        writer.write(b'{"T":"s","S":"B","sc":"T","t":"2026-11-24T14:30:01Z"}')
    records = list(read_recording(path))
    assert [r.key for r in records] == [b"A", None, b"B"]
    # an unreadable line keeps the previous time so pacing never jumps back to 0
    assert [r.event_ns for r in records] == [OPEN_NS, OPEN_NS, OPEN_NS + 10**9]
    empty = tmp_path / "empty.tops"
    empty.write_bytes(b"")
    assert list(read_recording(empty)) == []


# ---------------------------------------------------------------- the checked-in sample


def test_sample_matches_its_expected_counts() -> None:
    paths = {venue: SAMPLE / name for venue, name in RECORDING_NAMES.items()}
    expected = read_expected(SAMPLE)
    total = sum(p.stat().st_size for p in paths.values())
    assert total < 5_000_000
    for venue, (good, bad) in read_back(paths).items():
        counts = Counter(e.kind for e in good)
        assert {k: v for k, v in expected[venue].items() if k != "malformed"} == counts
        assert len(bad) == expected[venue]["malformed"]


def test_sample_is_regenerated_by_its_documented_call(tmp_path: Path) -> None:
    # If this fails after a deliberate change, regenerate the sample (samples/README.md).
    write_session(tmp_path, **SAMPLE_ARGS)
    for name in [*RECORDING_NAMES.values(), "expected.json"]:
        assert (tmp_path / name).read_bytes() == (SAMPLE / name).read_bytes(), name
