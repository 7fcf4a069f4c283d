"""The quotes flow's batch step: conflation on the decoded wire objects, and the store
writes it encodes straight from them (byte for byte those of the events)."""

from __future__ import annotations

from decimal import Decimal as D

import orjson

from flows.quotes import conflate, newest
from infra.quote_store import publish_of, wire_publish, wire_write, write_of
from schemas.marketdata import OfficialPrice, Quote, Security, Status, Trade, TradeBreak, to_wire

T0 = 1_795_530_600_000_000_000


def q(price: str, ns: int, venue: str = "iex", seq: int = 0) -> Quote:
    return Quote("AAPL", venue, D(price), 100, D(price) + 1, 100, ns, ns, seq)


def raw(events) -> list[tuple[str, None, bytes]]:
    return [("md.quotes", None, to_wire(e)) for e in events]


def test_newest_quote_per_venue_wins_and_equal_versions_keep_the_first():
    events = [q("10", T0 + 2), q("11", T0 + 1), q("12", T0 + 2), q("20", T0, "nasdaq")]
    ((writes, publishes, _),) = conflate(raw(events))
    assert sorted(writes) == sorted([write_of(q("10", T0 + 2)), write_of(q("20", T0, "nasdaq"))])
    assert publishes == []


def test_nbbo_versions_order_by_event_time_then_seq():
    a = q("10", T0 + 5, "NBBO", seq=7)
    b = q("11", T0 + 5, "NBBO", seq=9)
    ((writes, _, _),) = conflate(raw([b, a]))
    assert writes == [write_of(b)]


def test_every_trade_and_break_passes_in_order_and_other_kinds_are_dropped():
    t1 = Trade("AAPL", "iex", "1", D("10"), 100, ("@",), T0, T0)
    t2 = Trade("AAPL", "iex", "2", D("10"), 100, ("@",), T0, T0)
    brk = TradeBreak("AAPL", "iex", "1", D("10"), 100, T0 + 1, T0 + 1)
    halt = Status("AAPL", "iex", "halted", "T1", T0, T0)
    official = OfficialPrice("AAPL", "iex", "open", D("10"), T0, T0)
    ((writes, publishes, _),) = conflate(raw([t1, halt, t2, official, brk, t1]))
    assert writes == [write_of(halt)]
    assert publishes == [publish_of(e) for e in (t1, t2, brk, t1)]


def test_an_empty_batch_gives_no_item():
    assert conflate([]) == []


def test_the_item_carries_the_newest_event_time_of_every_message_for_the_feed_clock():
    late = OfficialPrice("AAPL", "iex", "open", D("10"), T0 + 9, T0 + 9)  # a dropped kind
    events = [q("10", T0 + 2), late, Trade("AAPL", "iex", "1", D("10"), 100, (), T0 + 5, T0)]
    ((_, _, feed_ns),) = conflate(raw(events))
    assert feed_ns == T0 + 9
    assert conflate(raw([late])) == [([], [], T0 + 9)], "nothing stored, the clock still moves"


def test_wire_writes_are_the_event_writes_byte_for_byte():
    stored = [
        Quote("BRK.A", "iex", D("612345.1200"), 1, D("612400.0000"), 3, T0, T0 + 9),
        Quote("AAPL", "NBBO", D("0.0000"), 0, D("0.0100"), 7, T0 + 1, T0 + 2, seq=2 * T0 + 5),
        Status("AAPL", "nasdaq", "paused", "LUDP", T0, T0 + 1),
        Status("AAPL", "nasdaq", "trading", "", T0, T0 + 1),
        Security("NEWCO", "iex", 100, True, T0, T0 + 1, D("12.5000")),
    ]
    for ev in stored:
        assert wire_write(orjson.loads(to_wire(ev))) == write_of(ev)
    published = [
        Trade("AAPL", "iex", "71675", D("189.1100"), 100, ("@", "F", "I"), T0, T0 + 3),
        Trade("AAPL", "iex", "7", D("0.0001"), 1, (), T0, T0 + 3, False, False),
        TradeBreak("AAPL", "iex", "71675", D("189.1100"), 100, T0 + 5, T0 + 6),
    ]
    for ev in published:
        assert wire_publish(orjson.loads(to_wire(ev))) == publish_of(ev)


def test_several_batches_conflate_across_them_and_equal_versions_keep_the_first():
    first, second = q("10", T0 + 2), q("11", T0 + 2)
    older, newer = q("9", T0 + 1, "nasdaq"), q("12", T0 + 3, "nasdaq")
    writes = [write_of(e) for e in (first, newer, second, older)]
    assert newest(writes) == [write_of(first), write_of(newer)]


def test_every_status_passes_in_order_so_a_halt_and_its_resumption_both_reach_the_stream():
    halt = Status("AAPL", "iex", "halted", "T1", T0 + 1, T0 + 1)
    resume = Status("AAPL", "iex", "trading", "", T0 + 2, T0 + 2)
    ((writes, _, _),) = conflate(raw([halt, q("10", T0), resume]))
    assert [w for w in writes if w[0] == "status"] == [write_of(halt), write_of(resume)]
    across = newest([write_of(halt), write_of(q("10", T0)), write_of(resume)])
    assert across == [write_of(q("10", T0)), write_of(halt), write_of(resume)]
