"""The quotes flow's batch step: conflation before events are built."""

from __future__ import annotations

from decimal import Decimal as D

from flows.quotes import conflate
from schemas.marketdata import OfficialPrice, Quote, Status, Trade, TradeBreak, to_wire

T0 = 1_795_530_600_000_000_000


def q(price: str, ns: int, venue: str = "iex", seq: int = 0) -> Quote:
    return Quote("AAPL", venue, D(price), 100, D(price) + 1, 100, ns, ns, seq)


def raw(events) -> list[tuple[str, None, bytes]]:
    return [("md.quotes", None, to_wire(e)) for e in events]


def test_newest_quote_per_venue_wins_and_equal_versions_keep_the_first():
    events = [q("10", T0 + 2), q("11", T0 + 1), q("12", T0 + 2), q("20", T0, "nasdaq")]
    (out,) = conflate(raw(events))
    assert sorted(out, key=lambda e: e.venue) == [q("10", T0 + 2), q("20", T0, "nasdaq")]


def test_nbbo_versions_order_by_event_time_then_seq():
    a = q("10", T0 + 5, "NBBO", seq=7)
    b = q("11", T0 + 5, "NBBO", seq=9)
    (out,) = conflate(raw([b, a]))
    assert out == [b]


def test_every_trade_and_break_passes_in_order_and_other_kinds_are_dropped():
    t1 = Trade("AAPL", "iex", "1", D("10"), 100, ("@",), T0, T0)
    t2 = Trade("AAPL", "iex", "2", D("10"), 100, ("@",), T0, T0)
    brk = TradeBreak("AAPL", "iex", "1", D("10"), 100, T0 + 1, T0 + 1)
    halt = Status("AAPL", "iex", "halted", "T1", T0, T0)
    official = OfficialPrice("AAPL", "iex", "open", D("10"), T0, T0)
    (out,) = conflate(raw([t1, halt, t2, official, brk, t1]))
    assert out == [halt, t1, t2, brk, t1]


def test_an_empty_batch_gives_no_item():
    assert conflate([]) == []
