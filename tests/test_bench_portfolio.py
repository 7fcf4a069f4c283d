"""bench.portfolio's feed: lines the normalize flow accepts, giving every symbol the
previous session's close, today's last trade and an NBBO quote inside the session."""

from __future__ import annotations

from decimal import Decimal

from bench.portfolio import PREVIOUS_CLOSE, SESSION_START, feed_lines
from schemas import json_feed
from schemas.marketdata import Malformed, Quote, Trade


def test_every_symbol_gets_a_previous_close_a_last_trade_and_a_quote() -> None:
    symbols = ["PF000", "PF001", "PF002"]
    lines = feed_lines(symbols)
    events = [e for s, line in lines for e in json_feed.parse_line(line.encode(), "nasdaq", 0)]
    assert not [e for e in events if isinstance(e, Malformed)]
    assert [s for s, _ in lines] == [e.symbol for e in events]
    times = [e.event_ns for e in events]
    assert times == sorted(times)  # the candles flow sees the days in order
    for i, s in enumerate(symbols):
        trades = [e for e in events if isinstance(e, Trade) and e.symbol == s]
        assert [t.event_ns < SESSION_START.timestamp() * 1e9 for t in trades] == [True, True]
        assert trades[0].event_ns == int(PREVIOUS_CLOSE.timestamp() * 1e9) + i * 1000
        assert trades[0].price == Decimal(f"{100 + i}.00")
        assert trades[0].trade_id != trades[1].trade_id
        (quote,) = [e for e in events if isinstance(e, Quote) and e.symbol == s]
        assert quote.bid_price < quote.ask_price
