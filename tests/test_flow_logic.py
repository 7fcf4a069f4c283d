"""Flow logic without Kafka: the normalize dataflow under bytewax.testing, the NBBO book and
the candle rules of schemas.candles.

The normalize test runs the real `flows.normalize.build` wiring; only its two Kafka
connectors are swapped for bytewax.testing ones (TestingSource of KafkaSourceMessage
objects, TestingSink collecting the KafkaSinkMessage objects it would publish).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from decimal import Decimal

import pytest
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st

import flows.normalize as normalize
from infra.settings import Settings
from schemas import iex_tops, json_feed
from schemas.candles import MINUTE_NS, Candle, build_candles, minute_start
from schemas.marketdata import (
    NBBO_VENUE,
    Event,
    OfficialPrice,
    Quote,
    Security,
    Status,
    SystemEvent,
    Trade,
    TradeBreak,
    from_wire,
)
from schemas.nbbo import HEARTBEAT_NS, NbboBook
from schemas.sale_conditions import eligibility

T0 = 1_795_530_600_000_000_000  # 2026-11-24T14:30:00Z, a minute boundary
MS = 1_000_000
D = Decimal


def quote(venue: str, bid: str, bid_size: int, ask: str, ask_size: int, ns: int, symbol="AAPL"):
    return Quote(symbol, venue, D(bid), bid_size, D(ask), ask_size, ns, ns)


def trade(
    trade_id: str,
    price: str,
    size: int,
    ns: int,
    *,
    venue: str = "iex",
    conditions: tuple[str, ...] = ("@",),
    symbol: str = "AAPL",
) -> Trade:
    last, volume = eligibility(conditions)
    return Trade(symbol, venue, trade_id, D(price), size, conditions, ns, ns, last, volume)


def brk(t: Trade) -> TradeBreak:
    return TradeBreak(t.symbol, t.venue, t.trade_id, t.price, t.size, t.event_ns + 1, 0)


# ----------------------------------------------------------------------------- normalize flow


def run_normalize(
    monkeypatch: pytest.MonkeyPatch, msgs: list[KafkaSourceMessage], namespace: str = ""
) -> list[KafkaSinkMessage]:
    """Run flows.normalize.build with TestingSource/TestingSink in place of Kafka."""
    batches: list = []
    monkeypatch.setattr(normalize, "raw_source", lambda *a, **k: TestingSource(msgs))
    monkeypatch.setattr(normalize, "batch_sink", lambda *a, **k: TestingSink(batches))
    run_main(normalize.build(Settings(namespace=namespace, venues="iex,nasdaq")))
    return [
        KafkaSinkMessage(key=key, value=value, topic=topic, headers=headers or [])
        for _, batch in batches
        for topic, key, value, headers in batch
    ]


def raw(topic: str, value: bytes) -> tuple[str, None, bytes]:
    return (topic, None, value)


def decoded(msgs: list[KafkaSinkMessage]) -> list[Event]:
    """The events of sink messages, receive_ns zeroed (the flow stamps wall-clock time)."""
    return [replace(from_wire(m.value), receive_ns=0) for m in msgs]


def zero_recv(events: list[Event], venue: str) -> list[Event]:
    return [replace(e, venue=venue, receive_ns=0) for e in events]


NS = "t9."  # a topic namespace, as the tests' pipelines use
NASDAQ_QUOTE = quote("nasdaq", "189.1000", 300, "189.1200", 200, T0)
NASDAQ_TRADE = trade("52983525", "189.1100", 100, T0 + 2 * MS, venue="nasdaq")
NASDAQ_BREAK = brk(NASDAQ_TRADE)
NASDAQ_HALT = Status("MSFT", "nasdaq", "halted", "Trading halt", T0 + 3 * MS, 0)
IEX_SYSTEM = SystemEvent("iex", "O", T0 - 10 * MS, 0)
IEX_SECURITY = Security("AAPL", "iex", 100, False, T0 - 5 * MS, 0)
IEX_QUOTE = quote("iex", "189.1100", 100, "189.1200", 100, T0 + 1 * MS)
IEX_TRADE = trade("7", "189.1150", 50, T0 + 4 * MS, conditions=("I",))
IEX_STATUS = Status("MSFT", "iex", "paused", "LUDP", T0 + 5 * MS, 0)
IEX_OFFICIAL = OfficialPrice("AAPL", "iex", "open", D("189.1100"), T0 + 6 * MS, 0)


def segment(writer: iex_tops.SegmentWriter, events: list[Event]) -> bytes:
    return writer.write(events, send_time_ns=T0)


@pytest.fixture
def normalize_run(monkeypatch):
    writer = iex_tops.SegmentWriter()
    iex_head = segment(writer, [IEX_SYSTEM, IEX_SECURITY])
    iex_quote = segment(writer, [IEX_QUOTE])
    # One good segment holding a message of an unknown type: only that message is bad.
    bad_body = b"Z" + bytes(9)
    iex_mixed = iex_tops.encode_segment(
        [iex_tops.encode_event(IEX_TRADE), bad_body, iex_tops.encode_event(IEX_STATUS)],
        send_time_ns=T0,
        first_seq=writer.next_seq,
        stream_offset=writer.stream_offset,
    )
    iex_official = segment(iex_tops.SegmentWriter(next_seq=100), [IEX_OFFICIAL])
    # A segment whose protocol id is not TOPS: the whole segment is dead-lettered.
    wrong_protocol = bytearray(segment(iex_tops.SegmentWriter(next_seq=200), [IEX_QUOTE]))
    wrong_protocol[2:4] = b"\x04\x80"
    bad_inputs = {
        "nasdaq": [b"", b'{"T":"q","S":"AAPL"', b"not a feed at all", b'{"T":"?","S":"AAPL"}'],
        "iex": [bytes(wrong_protocol), b"\x02garbage"],
    }
    nq, ni = f"{NS}md.raw.nasdaq", f"{NS}md.raw.iex"
    msgs = [
        raw(ni, iex_head),
        raw(nq, json_feed.encode_event(NASDAQ_QUOTE)),
        raw(nq, bad_inputs["nasdaq"][0]),
        raw(ni, iex_quote),
        raw(nq, bad_inputs["nasdaq"][1]),
        raw(nq, json_feed.encode_event(NASDAQ_TRADE)),
        raw(ni, bad_inputs["iex"][0]),
        raw(nq, json_feed.encode_event(NASDAQ_HALT)),
        raw(nq, bad_inputs["nasdaq"][2]),
        raw(ni, iex_mixed),
        raw(nq, json_feed.encode_event(NASDAQ_BREAK)),
        raw(ni, iex_official),
        raw(nq, bad_inputs["nasdaq"][3]),
        raw(ni, bad_inputs["iex"][1]),
    ]
    out = run_normalize(monkeypatch, msgs, namespace=NS)
    by_topic: dict[str, list[KafkaSinkMessage]] = {}
    for m in out:
        by_topic.setdefault(m.topic, []).append(m)
    return out, by_topic, bad_inputs, bad_body


def test_normalize_routes_only_known_topics(normalize_run):
    out, by_topic, _, _ = normalize_run
    assert set(by_topic) == {f"{NS}md.{t}" for t in ("quotes", "trades", "status", "deadletter")}
    assert all(isinstance(m, KafkaSinkMessage) for m in out)


def test_malformed_input_becomes_deadletter_with_raw_bytes_and_reason(normalize_run):
    _, by_topic, bad_inputs, bad_body = normalize_run
    dead = by_topic[f"{NS}md.deadletter"]
    got = sorted((dict(m.headers)["venue"].decode(), m.value) for m in dead)
    wanted = sorted([(v, b) for v, bads in bad_inputs.items() for b in bads] + [("iex", bad_body)])
    assert got == wanted, "every malformed message, and nothing else, is dead-lettered"
    for m in dead:
        headers = dict(m.headers)
        assert set(headers) == {"reason", "venue"}
        assert headers["reason"], "each dead letter says why"
        assert m.key == headers["venue"]
    reasons = {m.value: dict(m.headers)["reason"].decode() for m in dead}
    assert reasons[b""] == "empty message"
    assert reasons[b'{"T":"q","S":"AAPL"'] == "json: invalid JSON"
    assert reasons[b"not a feed at all"].startswith("unknown wire format")
    assert reasons[bad_body].startswith("tops: unknown message type")
    assert reasons[bad_inputs["iex"][0]].startswith("iex_tp: message protocol id")


def test_quotes_give_venue_quotes_and_nbbo_on_md_quotes(normalize_run):
    _, by_topic, _, _ = normalize_run
    msgs = by_topic[f"{NS}md.quotes"]
    assert all(m.key == b"AAPL" for m in msgs)
    events = decoded(msgs)
    venue_quotes = [e for e in events if e.venue != NBBO_VENUE]
    nbbos = [e for e in events if e.venue == NBBO_VENUE]
    assert venue_quotes == zero_recv([NASDAQ_QUOTE], "nasdaq") + zero_recv([IEX_QUOTE], "iex")
    # nasdaq alone, then both venues: iex has the better bid, both are at the best ask.
    assert [(n.bid_price, n.bid_size, n.ask_price, n.ask_size) for n in nbbos] == [
        (D("189.1000"), 300, D("189.1200"), 200),
        (D("189.1100"), 100, D("189.1200"), 300),
    ]
    assert nbbos[-1].event_ns == IEX_QUOTE.event_ns
    assert nbbos[-1].seq == NASDAQ_QUOTE.event_ns + IEX_QUOTE.event_ns
    # Each NBBO follows the venue quote that moved it.
    assert [e.venue for e in events] == ["nasdaq", NBBO_VENUE, "iex", NBBO_VENUE]


def test_trades_and_breaks_go_to_md_trades_keyed_by_symbol(normalize_run):
    _, by_topic, _, _ = normalize_run
    msgs = by_topic[f"{NS}md.trades"]
    assert all(m.key == b"AAPL" for m in msgs)
    got = decoded(msgs)
    wanted = zero_recv([NASDAQ_TRADE, NASDAQ_BREAK], "nasdaq") + zero_recv([IEX_TRADE], "iex")
    assert sorted(got, key=repr) == sorted(wanted, key=repr)
    [odd_lot] = [e for e in got if e.venue == "iex"]
    assert (odd_lot.updates_last, odd_lot.updates_volume) == (False, True)


def test_status_security_official_and_system_go_to_md_status(normalize_run):
    _, by_topic, _, _ = normalize_run
    msgs = by_topic[f"{NS}md.status"]
    for m in msgs:
        symbol = from_wire(m.value).symbol
        assert m.key == (symbol.encode() or None), "keyed by symbol; system events have none"
    got = decoded(msgs)
    wanted = zero_recv([NASDAQ_HALT], "nasdaq") + zero_recv(
        [IEX_SYSTEM, IEX_SECURITY, IEX_STATUS, IEX_OFFICIAL], "iex"
    )
    assert sorted(got, key=repr) == sorted(wanted, key=repr)


def test_a_parser_exception_is_dead_lettered_not_raised(monkeypatch):
    def explode(raw, venue, receive_ns):
        raise RuntimeError("boom")

    monkeypatch.setattr(normalize, "parse_raw", explode)
    payload = json_feed.encode_event(NASDAQ_QUOTE)
    out = run_normalize(monkeypatch, [raw("md.raw.nasdaq", payload)])
    [dead] = out
    assert dead.topic == "md.deadletter"
    assert dead.value == payload
    assert dict(dead.headers)["reason"] == b"parser error: RuntimeError: boom"
    assert dict(dead.headers)["venue"] == b"nasdaq"


def test_nbbo_state_is_per_symbol(monkeypatch):
    msft = quote("nasdaq", "400.0000", 100, "400.0500", 100, T0, symbol="MSFT")
    aapl = quote("iex", "189.0000", 100, "189.0100", 100, T0 + 1)
    msgs = [
        raw("md.raw.nasdaq", json_feed.encode_event(msft)),
        raw("md.raw.iex", segment(iex_tops.SegmentWriter(), [aapl])),
    ]
    out = run_normalize(monkeypatch, msgs)
    nbbos = [e for e in decoded(out) if e.venue == NBBO_VENUE]
    assert {(n.symbol, n.bid_price) for n in nbbos} == {
        ("MSFT", D("400.0000")),
        ("AAPL", D("189.0000")),
    }


# ----------------------------------------------------------------------------- NBBO book


def test_nbbo_is_best_price_across_venues():
    book = NbboBook()
    book.update(quote("iex", "10.0100", 100, "10.0500", 200, T0))
    nbbo = book.update(quote("nasdaq", "10.0200", 300, "10.0400", 400, T0 + 1))
    assert nbbo is not None and nbbo.venue == NBBO_VENUE
    assert (nbbo.bid_price, nbbo.bid_size, nbbo.ask_price, nbbo.ask_size) == (
        D("10.0200"),
        300,
        D("10.0400"),
        400,
    )
    # Best bid and best ask may come from different venues.
    nbbo = book.update(quote("iex", "10.0300", 100, "10.0500", 200, T0 + 2))
    assert (nbbo.bid_price, nbbo.bid_size, nbbo.ask_price, nbbo.ask_size) == (
        D("10.0300"),
        100,
        D("10.0400"),
        400,
    )


def test_nbbo_adds_sizes_of_venues_at_the_same_price():
    book = NbboBook()
    book.update(quote("iex", "10.0200", 100, "10.0400", 200, T0))
    book.update(quote("nasdaq", "10.0200", 300, "10.0400", 400, T0 + 1))
    nbbo = book.update(quote("arca", "10.0100", 900, "10.0400", 5, T0 + 2))
    assert (nbbo.bid_price, nbbo.bid_size, nbbo.ask_price, nbbo.ask_size) == (
        D("10.0200"),
        400,
        D("10.0400"),
        605,
    )


def test_nbbo_ignores_an_older_quote_of_a_venue():
    book = NbboBook()
    newer = quote("iex", "10.0200", 100, "10.0400", 100, T0 + 10)
    book.update(newer)
    assert book.update(quote("iex", "10.9000", 100, "10.9100", 100, T0 + 5)) is None
    assert book.venues["iex"] == newer
    assert book.last.bid_price == D("10.0200")


def test_zero_price_or_size_means_no_quote_on_that_side():
    book = NbboBook()
    nbbo = book.update(quote("iex", "0", 0, "10.0500", 100, T0))
    assert (nbbo.bid_price, nbbo.bid_size) == (D(0), 0)
    # A zero ask is not the lowest ask; a price without size is no quote either: the
    # consolidated book does not change, so nothing is sent.
    assert book.update(quote("nasdaq", "10.0100", 0, "0", 0, T0 + 1)) is None
    assert _sides(book.last) == (D(0), 0, D("10.0500"), 100)
    nbbo = book.update(quote("arca", "10.0000", 100, "10.0600", 0, T0 + 2))
    assert (nbbo.bid_price, nbbo.bid_size, nbbo.ask_price, nbbo.ask_size) == (
        D("10.0000"),
        100,
        D("10.0500"),
        100,
    )
    # The only bid goes away: no bid again.
    nbbo = book.update(quote("arca", "0", 0, "0", 0, T0 + 3))
    assert (nbbo.bid_price, nbbo.bid_size) == (D(0), 0)


def test_nbbo_version_increases_when_any_venue_moves_forward():
    book = NbboBook()
    versions = []
    # nasdaq's event time stays the newest while iex moves: event_ns is unchanged, seq grows.
    steps = [
        quote("nasdaq", "10.0000", 100, "10.1000", 100, T0 + 1000),
        quote("iex", "10.0100", 100, "10.1000", 100, T0 + 10),
        quote("iex", "10.0200", 100, "10.1000", 100, T0 + 20),
        quote("iex", "10.0300", 100, "10.1000", 100, T0 + 30),
        quote("nasdaq", "10.0400", 100, "10.1000", 100, T0 + 2000),
    ]
    for q in steps:
        nbbo = book.update(q)
        assert nbbo is not None, "each step changes the book"
        versions.append((nbbo.event_ns, nbbo.seq, nbbo.version))
    assert [v[0] for v in versions] == [T0 + 1000] * 4 + [T0 + 2000]
    assert all(a[:2] < b[:2] for a, b in itertools.pairwise(versions))
    assert all(a[2] < b[2] for a, b in itertools.pairwise(versions)), (
        "Quote.version strings order like (event_ns, seq)"
    )


def test_an_unchanged_book_is_re_sent_once_a_second():
    book = NbboBook()
    first = book.update(quote("iex", "10.0000", 100, "10.1000", 100, T0))
    assert first is not None
    assert book.update(quote("iex", "10.0000", 100, "10.1000", 100, T0 + 500 * MS)) is None
    assert book.update(quote("iex", "10.0000", 100, "10.1000", 100, T0 + HEARTBEAT_NS - 1)) is None
    beat = book.update(quote("iex", "10.0000", 100, "10.1000", 100, T0 + HEARTBEAT_NS))
    assert beat is not None and beat.event_ns == T0 + HEARTBEAT_NS
    assert (beat.bid_price, beat.ask_price) == (first.bid_price, first.ask_price)
    # The next heartbeat counts from the last one sent.
    assert book.update(quote("iex", "10.0000", 100, "10.1000", 100, T0 + 1500 * MS)) is None
    assert book.update(quote("iex", "10.0000", 100, "10.1000", 100, T0 + 2 * HEARTBEAT_NS))


VENUES = ("iex", "nasdaq", "arca")


@st.composite
def venue_streams(draw):
    """Quotes of several venues, each venue's event times strictly increasing, interleaved."""
    n = draw(st.integers(1, 40))
    out, clock = [], dict.fromkeys(VENUES, T0)
    for _ in range(n):
        v = draw(st.sampled_from(VENUES))
        clock[v] += draw(st.integers(1, 2 * HEARTBEAT_NS))
        bid = draw(st.integers(0, 5))
        ask = draw(st.integers(0, 5))
        out.append(
            quote(
                v,
                f"10.0{bid}00",
                draw(st.integers(0, 3)) * 100,
                f"10.1{ask}00",
                draw(st.integers(0, 3)) * 100,
                clock[v],
            )
        )
    return out


def _sides(q: Quote):
    return (q.bid_price, q.bid_size, q.ask_price, q.ask_size)


def reference_nbbo(latest: dict[str, Quote]):
    bids = [(q.bid_price, q.bid_size) for q in latest.values() if q.bid_price > 0 and q.bid_size]
    asks = [(q.ask_price, q.ask_size) for q in latest.values() if q.ask_price > 0 and q.ask_size]
    bid = max((p for p, _ in bids), default=D(0))
    ask = min((p for p, _ in asks), default=D(0))
    return (
        bid,
        sum(s for p, s in bids if p == bid),
        ask,
        sum(s for p, s in asks if p == ask),
    )


@settings(max_examples=200, deadline=None)
@given(venue_streams())
def test_nbbo_versions_strictly_increase_and_match_a_reference(quotes):
    book = NbboBook()
    latest: dict[str, Quote] = {}
    emitted = []
    for q in quotes:
        latest[q.venue] = q
        nbbo = book.update(q)
        if nbbo is not None:
            emitted.append(nbbo)
            assert _sides(nbbo) == reference_nbbo(latest)
        else:
            # Only an unchanged book within a second of the last one sent is held back.
            assert _sides(book.last) == reference_nbbo(latest)
            assert max(x.event_ns for x in latest.values()) - book.last.event_ns < HEARTBEAT_NS
    assert all(a.version < b.version for a, b in itertools.pairwise(emitted))


def test_every_nbbo_emitted_has_a_newer_version_than_the_last():
    book = NbboBook()
    first = book.update(quote("iex", "10.0000", 100, "10.1000", 100, T0))
    # Same venue, same event time, different book (e.g. two updates in one IEX timestamp).
    second = book.update(quote("iex", "9.9000", 100, "10.1000", 100, T0))
    assert second is None or second.version > first.version


# ----------------------------------------------------------------------------- candle rules


def one(events) -> Candle:
    [candle] = build_candles(events).values()
    return candle


def test_a_trade_counts_once_per_venue_and_trade_id():
    a = trade("1", "10.0000", 100, T0)
    same_id_other_venue = trade("1", "10.0000", 50, T0 + 1, venue="nasdaq")
    c = one([a, a, same_id_other_venue, a])
    assert (c.volume, c.trades) == (150, 2)


def test_a_break_removes_its_trade_whatever_the_order():
    a = trade("1", "10.0000", 100, T0)
    b = trade("2", "11.0000", 100, T0 + 1)
    for events in ([a, b, brk(b)], [brk(b), a, b], [b, brk(b), a, b]):
        c = one(events)
        assert (c.open, c.close, c.volume, c.trades) == (D(10), D(10), 100, 1)
    # A break only removes the trade of its own venue.
    other = replace(brk(b), venue="nasdaq")
    assert one([a, b, other]).volume == 200


def test_breaking_every_trade_of_a_minute_leaves_no_candle():
    a = trade("1", "10.0000", 100, T0)
    b = trade("2", "10.0000", 100, T0 + MINUTE_NS)
    candles = build_candles([a, b, brk(a)])
    assert list(candles) == [("AAPL", T0 + MINUTE_NS)]


def test_odd_lots_count_in_volume_but_not_in_ohlc():
    regular = trade("1", "10.0000", 100, T0 + 10)
    odd_high = trade("2", "12.0000", 40, T0 + 5, conditions=("I",))
    odd_low = trade("3", "8.0000", 60, T0 + 20, conditions=("I", "F"))
    c = one([regular, odd_high, odd_low])
    assert (c.open, c.high, c.low, c.close) == (D(10), D(10), D(10), D(10))
    assert (c.volume, c.trades) == (200, 3)
    assert c.vwap == D("9.8000")  # (1000 + 480 + 480) / 200
    # A minute of odd lots only: volume, no OHLC.
    c = one([odd_high, odd_low])
    assert (c.open, c.high, c.low, c.close) == (None, None, None, None)
    assert (c.volume, c.trades, c.vwap) == (100, 2, D("9.6000"))


def test_official_prints_count_nowhere():
    regular = trade("1", "10.0000", 100, T0 + 10)
    official_close = trade("2", "50.0000", 1000, T0 + 20, conditions=("M",))
    official_open = trade("3", "1.0000", 1000, T0, conditions=("Q",))
    corrected = trade("4", "2.0000", 1000, T0, conditions=("9",))
    c = one([regular, official_close, official_open, corrected])
    assert c == Candle("AAPL", T0, D(10), D(10), D(10), D(10), 100, D(10), 1)
    # A minute of official prints only has no candle at all.
    assert build_candles([official_close, official_open]) == {}


def test_minutes_start_exactly_at_second_zero():
    before = trade("1", "1.0000", 1, T0 - 1)
    at = trade("2", "2.0000", 1, T0)
    last_ns = trade("3", "3.0000", 1, T0 + MINUTE_NS - 1)
    next_minute = trade("4", "4.0000", 1, T0 + MINUTE_NS)
    candles = build_candles([before, at, last_ns, next_minute])
    assert sorted(candles) == [
        ("AAPL", T0 - MINUTE_NS),
        ("AAPL", T0),
        ("AAPL", T0 + MINUTE_NS),
    ]
    assert (candles["AAPL", T0].open, candles["AAPL", T0].close) == (D(2), D(3))
    assert minute_start(T0) == T0 and minute_start(T0 - 1) == T0 - MINUTE_NS


@pytest.mark.parametrize(
    ("prices", "vwap"),
    [
        (("10.0001", "10.0000"), "10.0000"),  # 10.00005 -> even neighbour 10.0000 (half-up: .0001)
        (("10.0003", "10.0000"), "10.0002"),  # 10.00015 -> 10.0002
        (("10.0005", "10.0000"), "10.0002"),  # 10.00025 -> 10.0002 (half-up: .0003)
        (("10.0000", "10.0000", "10.0001"), "10.0000"),  # 10.0000333...
        (("10.0000", "10.0001", "10.0001"), "10.0001"),  # 10.0000666...
    ],
)
def test_vwap_is_rounded_half_even_to_four_places(prices, vwap):
    c = one([trade(str(i), p, 1, T0 + i) for i, p in enumerate(prices)])
    assert c.vwap == D(vwap)
    assert str(c.vwap) == vwap


def test_open_and_close_ties_break_on_event_time_then_venue_then_trade_id():
    same_ns = [
        trade("5", "10.0000", 1, T0 + 7, venue="nasdaq"),
        trade("5", "11.0000", 1, T0 + 7, venue="iex"),
        trade("9", "12.0000", 1, T0 + 9, venue="iex"),
        trade("10", "13.0000", 1, T0 + 9, venue="iex"),  # "10" < "9" as text
    ]
    for order in (same_ns, same_ns[::-1], [same_ns[2], same_ns[0], same_ns[3], same_ns[1]]):
        c = one(order)
        assert (c.open, c.close) == (D(11), D(12))
        assert (c.high, c.low) == (D(13), D(10))


CONDITIONS = [("@",), ("@",), ("F",), ("I",), ("T",), ("I", "F"), ("M",), ("Q",), ("Z",)]


@st.composite
def trade_sets(draw):
    """Distinct trades (by symbol, venue, trade id) and breaks, some of unknown trades."""
    keys = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["AAA", "BBB"]),
                st.sampled_from(["iex", "nasdaq"]),
                st.integers(0, 40).map(str),
            ),
            unique=True,
            max_size=40,
        )
    )
    trades = [
        trade(
            tid,
            str(D(draw(st.integers(1, 200_000))).scaleb(-4)),
            draw(st.integers(1, 500)),
            T0 + draw(st.integers(-MINUTE_NS, 4 * MINUTE_NS)),
            venue=venue,
            conditions=draw(st.sampled_from(CONDITIONS)),
            symbol=symbol,
        )
        for symbol, venue, tid in keys
    ]
    broken = draw(st.lists(st.sampled_from(trades), max_size=10)) if trades else []
    stray = TradeBreak("AAA", "iex", "999", D(1), 1, T0, 0)
    return trades + [brk(t) for t in broken] + draw(st.lists(st.just(stray), max_size=1))


@settings(max_examples=300, deadline=None)
@given(trade_sets(), st.randoms(use_true_random=False), st.data())
def test_build_candles_ignores_order_and_duplicates(events, rnd, data):
    expected = build_candles(events)
    dups = data.draw(st.lists(st.sampled_from(events), max_size=20)) if events else []
    shuffled = events + dups
    rnd.shuffle(shuffled)
    assert build_candles(shuffled) == expected
    assert build_candles(iter(shuffled)) == expected, "any iterable, read once"
    for (symbol, start), c in expected.items():
        assert c.symbol == symbol and minute_start(start) == start
        assert c.volume > 0 and c.trades > 0
        if c.open is not None:
            assert c.low <= min(c.open, c.close) <= max(c.open, c.close) <= c.high


def test_nbbo_book_snapshot_copies_are_independent_and_pickle_round_trips():
    import copy
    import pickle

    book = NbboBook()
    book.update(quote("iex", "10.0100", 100, "10.0500", 200, T0))
    book.update(quote("nasdaq", "10.0200", 300, "10.0400", 400, T0 + 1))
    snap = copy.deepcopy({"0": book})["0"]
    assert snap == book and snap is not book and snap.venues is not book.venues
    book.update(quote("iex", "10.0300", 100, "10.0500", 200, T0 + 2))
    assert snap.venues["iex"].bid_price == D("10.0100"), "the snapshot did not move"
    assert snap.last != book.last
    restored = pickle.loads(pickle.dumps(snap))
    assert restored == snap and restored.last == snap.last
    assert restored.update(quote("iex", "10.0300", 100, "10.0500", 200, T0 + 2)) == book.last
    nbbo = replace(book.last, seq=12345)
    assert pickle.loads(pickle.dumps(nbbo)) == nbbo and copy.deepcopy(nbbo) is nbbo


@given(
    st.decimals(min_value=0, max_value=99_999_999, places=4, allow_nan=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**63 - 1),
    st.integers(0, 2**64 - 1),
    st.sampled_from(["iex", "NBBO", "nasdaq"]),
)
def test_quote_wire_is_the_dataclass_encoding_byte_for_byte(price, size, ns, seq, venue):
    import orjson

    from schemas.marketdata import _default, to_wire

    q = Quote("BRK.A", venue, price, size, price + D("0.0100"), size // 2 + 1, ns, ns + 1, seq)
    assert to_wire(q) == orjson.dumps(q, default=_default)
    assert from_wire(to_wire(q)) == q
