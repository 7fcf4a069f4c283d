"""Fills at the execution desk (schemas/execution.py, schemas/fill_model.py): simulated
venues at their displayed quotes, routing and sweeps, resting limits, ioc/fok, stop,
stop_limit and trailing triggers, time in force by the feed's clock, halts, the seeded
fill model and deterministic exec ids. Pure: no services."""

from __future__ import annotations

import pickle
from decimal import Decimal as D
from uuid import UUID

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.execution import CLOCK, MARKET, ORDER, key_by_symbol, run_desk
from schemas.execution import SymbolDesk, expiry_ns
from schemas.fill_model import FillModel
from schemas.marketdata import NBBO_VENUE, Quote, Status, Trade, to_wire
from schemas.oms import decode, encode
from schemas.order_states import OrderStatus
from schemas.sale_conditions import eligibility
from tests.test_execution_desk import ACCOUNT, cancel_msg, new_msg, ns, order, replace_msg

MS = 1_000_000
NOON = ns(17, 0)  # 12:00 New York on Tuesday 2026-11-24
CLOSE = ns(21, 0)  # 16:00 New York


def quote(venue: str, bid: str, bid_size: int, ask: str, ask_size: int, at: int) -> dict:
    q = Quote("AAPL", venue, D(bid), bid_size, D(ask), ask_size, at, at)
    return orjson.loads(to_wire(q))


def trade(price: str, at: int, conditions: tuple[str, ...] = ("@",), size: int = 100) -> dict:
    last, volume = eligibility(conditions)
    t = Trade("AAPL", "nasdaq", str(at), D(price), size, conditions, at, at, last, volume)
    return orjson.loads(to_wire(t))


def status(venue: str, state: str, at: int) -> dict:
    return orjson.loads(to_wire(Status("AAPL", venue, state, "", at, at)))  # type: ignore[arg-type]


def fills(answers: list[dict]) -> list[tuple[str, str, str]]:
    """(venue, qty, price) of each fill, in order."""
    return [(a["venue"], a["qty"], a["price"]) for a in answers if a["kind"] == "fill"]


def kinds(answers: list[dict]) -> list[str]:
    return [a["kind"] for a in answers]


def desk_at(at: int = NOON, model: FillModel | None = None, **books: tuple) -> SymbolDesk:
    """A desk whose clock is `at` with venue quotes (bid, bid_size, ask, ask_size)."""
    desk = SymbolDesk("AAPL", model=model or FillModel())
    desk.on_market_time(at)
    for venue, (bid, bs, ask, asz) in books.items():
        desk.on_market(quote(venue, bid, bs, ask, asz, at))
    return desk


_ids = iter(range(1000, 100000))


def buy(kind: str = "limit", **kw) -> object:
    fields = {"id": UUID(int=next(_ids)), "type": kind, "qty": D("100")}
    if kind in ("market", "stop", "trailing_stop"):
        fields.update(limit_price=None, reserve_price=D("1000"))
    fields.update(kw)
    return order(**fields)


def sell(kind: str = "limit", **kw) -> object:
    fields = {"side": "sell", "reserve_price": None, "reserved_cash": D(0)}
    if kind in ("market", "stop", "trailing_stop"):
        fields["limit_price"] = None
    return buy(kind, **{**fields, **kw})


# -- venues and routing ------------------------------------------------------------------


def test_a_marketable_buy_goes_to_the_venue_with_the_best_ask():
    desk = desk_at(iex=("9.99", 100, "10.02", 200), nasdaq=("10.00", 100, "10.01", 200))
    o = buy("market")
    answers = desk.on_order_message(new_msg(o, 1))
    assert kinds(answers) == ["acknowledged", "fill"]
    f = answers[1]
    assert f == {
        "event_id": f"fill:{o.id}:1",
        "kind": "fill",
        "at": NOON,
        "order_id": str(o.id),
        "account_id": str(ACCOUNT),
        "symbol": "AAPL",
        "exec_id": f"fill:{o.id}:1",
        "qty": "100.000000",
        "price": "10.0100",
        "venue": "nasdaq",
        "route": ["nasdaq"],
    }
    assert desk.orders == {}  # filled: it left the desk


def test_a_marketable_sell_goes_to_the_best_bid():
    desk = desk_at(iex=("10.00", 300, "10.02", 200), nasdaq=("9.99", 300, "10.01", 200))
    answers = desk.on_order_message(new_msg(sell("market"), 1))
    assert fills(answers) == [("iex", "100.000000", "10.0000")]


def test_a_large_order_sweeps_by_price_then_size_then_venue_name_and_records_the_route():
    desk = desk_at(
        nasdaq=("9.99", 100, "10.01", 200),
        iex=("9.99", 100, "10.02", 100),
        arca=("9.99", 100, "10.02", 300),
        bats=("9.99", 100, "10.02", 100),
        memx=("9.99", 100, "10.03", 900),
    )
    answers = desk.on_order_message(new_msg(buy("market", qty=D("750")), 1))
    assert fills(answers) == [
        ("nasdaq", "200.000000", "10.0100"),
        ("arca", "300.000000", "10.0200"),  # the larger size at 10.02 first
        ("bats", "100.000000", "10.0200"),  # then by name: bats before iex
        ("iex", "100.000000", "10.0200"),
        ("memx", "50.000000", "10.0300"),
    ]
    route = ["nasdaq", "arca", "bats", "iex", "memx"]
    assert all(a["route"] == route for a in answers if a["kind"] == "fill")
    assert [a["exec_id"] for a in answers[1:]] == [
        f"fill:{answers[0]['order_id']}:{n}" for n in range(1, 6)
    ]


def test_the_nbbo_quote_is_not_a_venue():
    desk = desk_at()
    desk.on_market(quote(NBBO_VENUE, "9.99", 100, "10.01", 100, NOON + 1))
    assert kinds(desk.on_order_message(new_msg(buy("market"), 1))) == ["acknowledged"]


def test_at_most_the_displayed_size_per_quote_update_shared_by_orders_in_arrival_order():
    desk = desk_at(iex=("9.99", 100, "10.02", 150))
    a, b = buy(qty=D("100"), limit_price=D("10.05")), buy(qty=D("300"), limit_price=D("10.05"))
    assert fills(desk.on_order_message(new_msg(a, 1))) == [("iex", "100.000000", "10.0200")]
    assert fills(desk.on_order_message(new_msg(b, 2))) == [("iex", "50.000000", "10.0200")]
    # other events do not refresh iex's size: it is consumed until iex quotes again
    assert fills(desk.on_market(quote("nasdaq", "9.98", 100, "10.10", 500, NOON + 1))) == []
    assert fills(desk.on_market(trade("10.02", NOON + 2))) == []
    answers = desk.on_market(quote("iex", "9.99", 100, "10.02", 150, NOON + 3))
    assert fills(answers) == [("iex", "150.000000", "10.0200")]
    assert answers[0]["event_id"] == f"fill:{b.id}:2"
    assert desk.orders[str(b.id)].filled_qty == D("200")


def test_a_repeated_venue_quote_does_not_refresh_the_displayed_size():
    desk = desk_at(iex=("9.99", 100, "10.02", 100))
    o = buy(qty=D("300"), limit_price=D("10.05"))
    assert len(fills(desk.on_order_message(new_msg(o, 1)))) == 1
    assert fills(desk.on_market(quote("iex", "9.99", 100, "10.02", 100, NOON))) == []
    assert fills(desk.on_market(quote("iex", "9.99", 100, "10.03", 100, NOON + 5))) == [
        ("iex", "100.000000", "10.0300")
    ]


def test_a_resting_limit_fills_when_a_venue_quote_crosses_it_later():
    desk = desk_at(iex=("9.95", 100, "10.05", 100))
    o = buy(qty=D("80"), limit_price=D("10.00"))
    assert kinds(desk.on_order_message(new_msg(o, 1))) == ["acknowledged"]
    assert fills(desk.on_market(quote("nasdaq", "9.95", 100, "10.01", 100, NOON + 1))) == []
    answers = desk.on_market(quote("nasdaq", "9.95", 100, "9.98", 50, NOON + 2))
    assert fills(answers) == [("nasdaq", "50.000000", "9.9800")]  # the venue's ask
    assert answers[0]["at"] == NOON + 2
    answers = desk.on_market(quote("iex", "9.95", 100, "10.00", 100, NOON + 3))
    assert fills(answers) == [("iex", "30.000000", "10.0000")]
    assert desk.orders == {}


def test_a_sell_limit_never_fills_below_its_limit():
    desk = desk_at(iex=("9.99", 100, "10.05", 100), nasdaq=("10.01", 30, "10.05", 100))
    answers = desk.on_order_message(new_msg(sell(limit_price=D("10.00")), 1))
    assert fills(answers) == [("nasdaq", "30.000000", "10.0100")]


def test_a_buy_never_fills_above_its_reserve_price_and_slippage_is_clipped_there():
    desk = desk_at(
        model=FillModel(slippage_ticks=3),
        nasdaq=("10.00", 100, "10.01", 100),
        iex=("10.00", 100, "10.02", 100),
        arca=("10.00", 100, "10.05", 500),
    )
    o = buy("market", qty=D("500"), reserve_price=D("10.03"))
    answers = desk.on_order_message(new_msg(o, 1))
    # nasdaq 10.01 + 3 ticks = 10.04 and iex 10.05 clip at 10.03; arca is above the cap
    assert fills(answers) == [("nasdaq", "100.000000", "10.0300"), ("iex", "100.000000", "10.0300")]
    assert str(o.id) in desk.orders  # the rest waits as a marketable limit at 10.03


def test_slippage_moves_sells_down_by_ticks():
    desk = desk_at(model=FillModel(slippage_ticks=2), iex=("0.5000", 100, "0.5100", 100))
    assert fills(desk.on_order_message(new_msg(sell("market"), 1))) == [
        ("iex", "100.000000", "0.4998")
    ]


def test_a_notional_buy_fills_whole_cents_of_shares_to_six_places():
    desk = desk_at(iex=("9.99", 100, "10.01", 100))
    o = buy("market", qty=None, notional=D("50.00"))
    answers = desk.on_order_message(new_msg(o, 1))
    assert fills(answers) == [("iex", "4.995004", "10.0100")]
    assert desk.orders == {}  # less than a cent is left


# -- ioc and fok -------------------------------------------------------------------------


def test_ioc_fills_what_it_can_at_once_and_cancels_the_rest():
    desk = desk_at(iex=("9.99", 100, "10.02", 60), nasdaq=("9.99", 100, "10.09", 500))
    o = buy(qty=D("100"), limit_price=D("10.05"), time_in_force="ioc")
    answers = desk.on_order_message(new_msg(o, 1))
    assert kinds(answers) == ["acknowledged", "fill", "canceled"]
    assert fills(answers) == [("iex", "60.000000", "10.0200")]
    assert answers[2]["reason"] == "ioc remainder"
    assert answers[2]["event_id"] == "canceled:o:1"
    assert desk.orders == {}


def test_ioc_with_nothing_to_take_is_canceled_with_no_fill():
    desk = desk_at(iex=("9.99", 100, "10.10", 60))
    o = buy(limit_price=D("10.05"), time_in_force="ioc")
    assert kinds(desk.on_order_message(new_msg(o, 1))) == ["acknowledged", "canceled"]


def test_fok_fills_entirely_or_is_canceled_with_no_fill():
    books = {"iex": ("9.99", 100, "10.02", 60), "nasdaq": ("9.99", 100, "10.03", 30)}
    desk = desk_at(**books)
    big = buy(qty=D("100"), limit_price=D("10.05"), time_in_force="fok")
    answers = desk.on_order_message(new_msg(big, 1))
    assert kinds(answers) == ["acknowledged", "canceled"]
    assert answers[1]["reason"] == "fok not fillable"
    assert desk.venues["iex"].ask_taken == 0  # nothing was taken
    small = buy(qty=D("90"), limit_price=D("10.05"), time_in_force="fok")
    answers = desk.on_order_message(new_msg(small, 2))
    assert fills(answers) == [("iex", "60.000000", "10.0200"), ("nasdaq", "30.000000", "10.0300")]
    assert kinds(answers) == ["acknowledged", "fill", "fill"]


# -- triggers ----------------------------------------------------------------------------


def test_a_stop_triggers_on_the_last_regular_trade_not_on_a_quote_nor_an_ineligible_trade():
    desk = desk_at(iex=("9.95", 500, "9.97", 500))
    o = sell("stop", stop_price=D("9.90"))
    assert kinds(desk.on_order_message(new_msg(o, 1))) == ["acknowledged"]
    assert desk.on_market(quote("iex", "9.85", 500, "9.87", 500, NOON + 1)) == []  # a quote
    assert desk.on_market(trade("9.80", NOON + 2, ("I",))) == []  # odd lot: no last
    assert desk.on_market(trade("9.80", NOON + 3, ("M",))) == []  # official close print
    assert desk.on_market(trade("9.91", NOON + 4)) == []  # regular, above the stop
    answers = desk.on_market(trade("9.90", NOON + 5))  # at the stop: triggers, sells at bid
    assert fills(answers) == [("iex", "100.000000", "9.8500")]
    assert answers[0]["at"] == NOON + 5


def test_a_buy_stop_triggers_at_or_above_its_stop_and_works_as_a_market_order():
    desk = desk_at(iex=("10.05", 500, "10.12", 500))
    o = buy("stop", stop_price=D("10.10"), reserve_price=D("10.61"))
    desk.on_order_message(new_msg(o, 1))
    assert desk.on_market(trade("10.09", NOON + 1)) == []
    assert fills(desk.on_market(trade("10.11", NOON + 2))) == [("iex", "100.000000", "10.1200")]


def test_a_stop_limit_becomes_a_limit_order_when_triggered():
    desk = desk_at(iex=("10.05", 500, "10.15", 500))
    o = buy("stop_limit", stop_price=D("10.10"), limit_price=D("10.12"), reserve_price=D("10.12"))
    desk.on_order_message(new_msg(o, 1))
    assert desk.on_market(trade("10.10", NOON + 1)) == []  # triggered; 10.15 is above 10.12
    assert desk.orders[str(o.id)].triggered
    assert fills(desk.on_market(quote("nasdaq", "10.05", 40, "10.12", 40, NOON + 2))) == [
        ("nasdaq", "40.000000", "10.1200")
    ]


def test_a_trailing_sell_tracks_the_high_water_mark_of_regular_trades():
    desk = desk_at(iex=("9.99", 500, "10.01", 500))
    desk.on_market(trade("10.00", NOON + 1))  # the last trade seeds the mark
    o = sell("trailing_stop", trail_price=D("0.50"))
    desk.on_order_message(new_msg(o, 1))
    assert desk.orders[str(o.id)].mark == D("10.00")
    for n, price in enumerate(["10.40", "10.80", "10.40", "10.31"], start=2):
        assert desk.on_market(trade(price, NOON + n)) == []
    assert desk.on_market(trade("10.20", NOON + 6, ("I",))) == []  # odd lot: ignored
    assert desk.orders[str(o.id)].mark == D("10.80")
    answers = desk.on_market(trade("10.30", NOON + 7))  # 10.80 - 0.50
    assert fills(answers) == [("iex", "100.000000", "9.9900")]
    assert answers[0]["hwm"] == "10.80"


def test_a_trailing_buy_by_percent_tracks_the_low_water_mark():
    desk = desk_at(iex=("9.99", 500, "10.01", 500))
    o = buy("trailing_stop", trail_percent=D("10"), reserve_price=D("20"))
    desk.on_order_message(new_msg(o, 1))
    assert desk.orders[str(o.id)].mark is None  # no trade seen yet
    for n, price in enumerate(["10.00", "9.00", "9.80"], start=1):
        assert desk.on_market(trade(price, NOON + n)) == []
    answers = desk.on_market(trade("9.90", NOON + 5))  # 9.00 × 1.10
    assert kinds(answers) == ["fill"] and answers[0]["hwm"] == "9.00"


# -- time in force -----------------------------------------------------------------------


def test_day_orders_expire_at_the_regular_close_by_the_feed_clock():
    desk = desk_at(ns(20, 59), iex=("9.99", 100, "10.05", 100))
    day, gtc = buy(limit_price=D("10.00")), buy(limit_price=D("10.00"), time_in_force="gtc")
    desk.on_order_message(new_msg(day, 1))
    desk.on_order_message(new_msg(gtc, 2))
    assert desk.on_market_time(CLOSE - 1) == []
    answers = desk.on_market(quote("iex", "9.90", 100, "9.95", 100, CLOSE + 5))
    assert answers == [
        {
            "event_id": "expired:o:1",
            "kind": "expired",
            "at": CLOSE,
            "order_id": str(day.id),
            "account_id": str(ACCOUNT),
            "symbol": "AAPL",
        }
    ]  # and the quote after the close fills nothing
    assert list(desk.orders) == [str(gtc.id)]
    # gtc persists across days; the quote left from after hours is stale in the next
    # session, and a fresh one fills it
    assert desk.on_market_time(ns(14, 31, day=25)) == []
    assert fills(desk.on_market(quote("iex", "9.90", 100, "9.96", 100, ns(14, 32, day=25)))) == [
        ("iex", "100.000000", "9.9600")
    ]


def test_day_orders_expire_at_one_on_a_half_day():
    half_close = ns(18, 0, day=27)  # the day after Thanksgiving closes at 13:00 New York
    assert expiry_ns(ns(15, 0, day=27), extended=False) == half_close
    desk = desk_at(ns(15, 0, day=27))
    desk.on_order_message(new_msg(buy(), 1))
    assert desk.on_market_time(half_close - 1) == []
    assert [(a["kind"], a["at"]) for a in desk.on_market_time(half_close + 10)] == [
        ("expired", half_close)
    ]


def test_expiry_of_day_orders_by_when_they_start():
    assert expiry_ns(ns(13, 0), extended=False) == CLOSE  # pre-market: today's close
    assert expiry_ns(ns(22, 0), extended=False) == ns(21, 0, day=25)  # after: tomorrow's
    assert expiry_ns(ns(22, 0), extended=True) == ns(1, 0, day=25)  # 20:00 New York
    assert expiry_ns(ns(15, 0, day=28), extended=False) == ns(21, 0, day=30)  # Saturday


def test_an_extended_hours_limit_fills_in_pre_market_and_a_regular_one_waits():
    desk = desk_at(ns(13, 0), iex=("9.90", 100, "9.95", 100))  # 08:00 New York
    regular = buy(qty=D("10"))
    extended = buy(qty=D("10"), extended_hours=True)
    assert kinds(desk.on_order_message(new_msg(regular, 1))) == ["acknowledged"]
    assert fills(desk.on_order_message(new_msg(extended, 2))) == [("iex", "10.000000", "9.9500")]
    answers = desk.on_market(quote("iex", "9.90", 100, "9.96", 100, ns(14, 30)))
    assert fills(answers) == [("iex", "10.000000", "9.9600")]  # at the open


def test_opg_orders_take_part_only_in_the_first_regular_session_quote():
    desk = desk_at(ns(13, 0), iex=("9.90", 100, "10.10", 100))
    crossing = buy(status=OrderStatus.ACCEPTED, time_in_force="opg", qty=D("50"))
    resting = buy(status=OrderStatus.ACCEPTED, time_in_force="opg", limit_price=D("9.00"))
    desk.on_order_message(new_msg(crossing, 1))
    desk.on_order_message(new_msg(resting, 2))
    released = desk.on_market(trade("10.00", ns(14, 30) + 1))  # the open: acknowledged
    assert [(a["kind"], a["order_id"], a["at"]) for a in released] == [
        ("acknowledged", str(crossing.id), ns(14, 30)),
        ("acknowledged", str(resting.id), ns(14, 30)),
    ]
    opening = ns(14, 30) + 2
    answers = desk.on_market(quote("nasdaq", "9.95", 100, "9.99", 100, opening))
    assert fills(answers) == [("nasdaq", "50.000000", "9.9900")]
    assert [(a["kind"], a["order_id"], a["at"]) for a in answers if a["kind"] != "fill"] == [
        ("expired", str(resting.id), opening)
    ]
    late = buy(time_in_force="opg")  # reaches the desk after the opening quote
    assert kinds(desk.on_order_message(new_msg(late, 3))) == ["acknowledged", "expired"]


def test_cls_orders_fill_only_in_the_last_minute_and_expire_at_the_close():
    desk = desk_at(ns(20, 50), iex=("9.90", 100, "9.95", 100))
    crossing = buy(time_in_force="cls", qty=D("40"))
    resting = buy(time_in_force="cls", limit_price=D("9.00"))
    assert kinds(desk.on_order_message(new_msg(crossing, 1))) == ["acknowledged"]
    desk.on_order_message(new_msg(resting, 2))
    assert desk.on_market(quote("iex", "9.90", 100, "9.96", 100, ns(20, 58))) == []
    answers = desk.on_market(quote("iex", "9.90", 100, "9.97", 100, ns(20, 59) + 1))
    assert fills(answers) == [("iex", "40.000000", "9.9700")]
    assert [(a["kind"], a["at"]) for a in desk.on_market_time(CLOSE)] == [("expired", CLOSE)]


# -- halts -------------------------------------------------------------------------------


def test_a_halted_symbol_gets_no_fills_and_resting_orders_wait():
    desk = desk_at(iex=("9.90", 100, "10.05", 100), nasdaq=("9.90", 100, "10.05", 100))
    o = buy(limit_price=D("10.00"))
    desk.on_order_message(new_msg(o, 1))
    assert desk.on_market(status("nasdaq", "paused", NOON + 1)) == []
    assert desk.on_market(quote("iex", "9.90", 100, "9.98", 100, NOON + 2)) == []
    assert desk.on_market(trade("9.98", NOON + 3)) == []
    ioc = buy(limit_price=D("10.00"), time_in_force="ioc")
    answers = desk.on_order_message(new_msg(ioc, 2))
    assert kinds(answers) == ["acknowledged", "canceled"]
    assert answers[1]["reason"] == "ioc remainder"
    assert desk.on_market(status("nasdaq", "trading", NOON + 4)) == [
        {
            "event_id": f"fill:{o.id}:1",
            "kind": "fill",
            "at": NOON + 4,
            "order_id": str(o.id),
            "account_id": str(ACCOUNT),
            "symbol": "AAPL",
            "exec_id": f"fill:{o.id}:1",
            "qty": "100.000000",
            "price": "9.9800",
            "venue": "iex",
            "route": ["iex"],
        },
    ]


def test_a_stop_does_not_trigger_while_halted():
    desk = desk_at(iex=("9.95", 500, "9.97", 500))
    o = sell("stop", stop_price=D("9.90"))
    desk.on_order_message(new_msg(o, 1))
    desk.on_market(status("iex", "halted", NOON + 1))
    assert desk.on_market(trade("9.80", NOON + 2)) == []
    assert not desk.orders[str(o.id)].triggered


# -- the fill model ----------------------------------------------------------------------


def test_latency_makes_an_order_fillable_only_after_the_feed_clock_passes_it():
    desk = desk_at(model=FillModel(latency_ms=100), iex=("9.90", 100, "9.95", 100))
    o = buy()
    assert kinds(desk.on_order_message(new_msg(o, 1))) == ["acknowledged"]
    assert desk.on_market_time(NOON + 99 * MS) == []
    assert fills(desk.on_market_time(NOON + 100 * MS)) == [("iex", "100.000000", "9.9500")]


def _partial_script(model: FillModel) -> list[dict]:
    desk = desk_at(model=model, iex=("9.90", 100, "9.95", 1000), nasdaq=("9.90", 100, "9.95", 800))
    out = desk.on_order_message(new_msg(buy(id=UUID(int=7), qty=D("5000")), 1))
    for n in range(1, 6):
        out += desk.on_market(quote("iex", "9.90", 100, "9.95", 1000, NOON + n))
    return out


def test_seeded_partial_fills_are_deterministic():
    model = FillModel(fraction_min=D("0.2"), fraction_max=D("0.8"), min_qty=D("100"), seed=42)
    first = _partial_script(model)
    assert first == _partial_script(model)
    qtys = [D(a["qty"]) for a in first if a["kind"] == "fill"]
    assert len(qtys) == 7  # both venues at first, then iex at each of its 5 updates
    assert all(D(100) <= q <= D(800) for q in qtys) and len(set(qtys)) > 1
    other = _partial_script(FillModel(fraction_min=D("0.2"), fraction_max=D("0.8"), seed=43))
    assert fills(other) != fills(first)
    assert FillModel(fraction_min=D("0.5"), fraction_max=D("0.5")).available(101, "x", "v", 1) == 50


def test_the_fill_model_refuses_nonsense():
    for bad in (
        {"latency_ms": -1},
        {"fraction_min": D(0)},
        {"fraction_min": D("0.9"), "fraction_max": D("0.5")},
        {"fraction_max": D("1.5")},
        {"min_qty": D(-1)},
        {"slippage_ticks": -1},
    ):
        with pytest.raises(ValueError):
            FillModel(**bad)


# -- ids, replaces and snapshots ---------------------------------------------------------


def test_a_replace_compares_expected_filled_qty_with_the_desks_own_fills():
    desk = desk_at(iex=("9.90", 100, "9.95", 30))
    old = buy(limit_price=D("10.00"))
    desk.on_order_message(new_msg(old, 1))
    new = buy(limit_price=D("10.01"), replaces=old.id)
    answers = desk.on_order_message(replace_msg(old, new, 2, expected="0"))
    assert answers[0]["kind"] == "replace_rejected"
    assert answers[0]["reason"] == "filled_qty_changed: expected 0, filled 30"
    answers = desk.on_order_message(replace_msg(old, new, 3, expected="30"))
    assert kinds(answers) == ["replaced"]
    # the replacing order works at once: a fresh iex quote fills it
    assert fills(desk.on_market(quote("iex", "9.90", 100, "10.01", 100, NOON + 1))) == [
        ("iex", "100.000000", "10.0100")
    ]


def test_cancel_after_a_partial_fill_cancels_the_rest():
    desk = desk_at(iex=("9.90", 100, "9.95", 30))
    o = buy()
    desk.on_order_message(new_msg(o, 1))
    assert kinds(desk.on_order_message(cancel_msg(o, 2))) == ["canceled"]
    assert desk.on_market(quote("iex", "9.90", 100, "9.95", 300, NOON + 1)) == []


def _steps() -> list:
    """A scripted session, as steps that each feed a desk one input."""
    a = buy(id=UUID(int=1), qty=D("300"), limit_price=D("10.00"))
    b = sell("trailing_stop", id=UUID(int=2), trail_price=D("0.10"))
    c = buy(id=UUID(int=3), qty=D("50"), limit_price=D("10.00"), time_in_force="ioc")
    return [
        lambda d: d.on_market_time(NOON),
        lambda d: d.on_market(quote("iex", "9.95", 100, "10.01", 100, NOON + 1)),
        lambda d: d.on_order_message(new_msg(a, 1)),
        lambda d: d.on_order_message(new_msg(b, 2)),
        lambda d: d.on_market(quote("iex", "9.95", 100, "9.99", 100, NOON + 2)),
        lambda d: d.on_market(trade("10.20", NOON + 3)),
        lambda d: d.on_market(quote("nasdaq", "9.96", 100, "10.00", 150, NOON + 4)),
        lambda d: d.on_order_message(new_msg(c, 3)),
        lambda d: d.on_market(trade("10.05", NOON + 5)),
        lambda d: d.on_market(quote("iex", "9.95", 100, "9.98", 100, NOON + 6)),
    ]


def _run(desk: SymbolDesk, steps: list) -> list[dict]:
    return [a for step in steps for a in step(desk)]


def test_exec_ids_and_fills_are_stable_across_a_pickle_of_the_desk():
    full = _run(SymbolDesk("AAPL"), _steps())
    assert [(a["event_id"], a["qty"], a["price"]) for a in full if a["kind"] == "fill"] == [
        (f"fill:{UUID(int=1)}:1", "100.000000", "9.9900"),
        (f"fill:{UUID(int=1)}:2", "150.000000", "10.0000"),
        (f"fill:{UUID(int=2)}:1", "100.000000", "9.9600"),  # 10.20 - 0.10 >= 10.05
        (f"fill:{UUID(int=1)}:3", "50.000000", "9.9800"),
    ]
    assert [a["event_id"] for a in full if a["kind"] == "canceled"] == ["canceled:o:3"]
    steps = _steps()
    for cut in range(len(steps) + 1):
        desk = SymbolDesk("AAPL")
        head = _run(desk, steps[:cut])
        saved = pickle.dumps(desk)  # what Bytewax recovery keeps
        tail = _run(desk, steps[cut:])
        assert head + tail == full
        assert _run(pickle.loads(saved), steps[cut:]) == tail


# -- the flow's steps --------------------------------------------------------------------


def test_the_flow_hands_venue_events_to_the_desk_whole_and_the_rest_as_its_clock():
    o = buy(limit_price=D("10.00"))
    q, nbbo = (
        quote("iex", "9.95", 100, "9.99", 40, NOON + 1),
        quote("NBBO", "9", 1, "9", 1, NOON + 2),
    )
    t, s = trade("9.99", NOON + 3), status("iex", "trading", NOON + 4)
    batch = [
        ("md.quotes", b"AAPL", orjson.dumps(nbbo)),
        ("oms.orders", b"AAPL", encode(new_msg(o, 1))),
        ("md.quotes", b"AAPL", orjson.dumps(q)),
        ("md.trades", b"AAPL", orjson.dumps(t)),
        ("md.status", b"AAPL", orjson.dumps(s)),
        ("md.status", b"AAPL", b'{"kind": "security", "symbol": "AAPL", "event_ns": 5}'),
    ]
    ((_, work),) = key_by_symbol(batch, "oms.orders")
    assert [kind for kind, _ in work[1]] == [CLOCK, ORDER, MARKET, MARKET, MARKET, CLOCK]
    model = FillModel(slippage_ticks=1)
    desk, out = run_desk(None, work, "oms.executions", model)
    assert desk.model == model
    assert [(topic, key) for topic, key, _, _ in out] == [
        ("oms.executions", str(ACCOUNT).encode())
    ] * 2
    answers = [decode(value) for _, _, value, _ in out]
    assert fills(answers) == [("iex", "40.000000", "10.0000")]  # 9.99 + a tick


def test_a_desk_snapshot_from_before_fills_restores_with_defaults():
    """Recovery snapshots taken by the desk before fills (fewer fields) still load: the
    new fields take their defaults and an old stop order is not taken as triggered."""
    desk = desk_at()
    stop, limit = sell("stop", stop_price=D("9.50")), buy(limit_price=D("10.00"))
    desk.on_order_message(new_msg(stop, 1))
    desk.on_order_message(new_msg(limit, 2))
    before = ("symbol", "orders", "clock_ns", "session_open_ns", "valid_until_ns")
    old = SymbolDesk.__new__(SymbolDesk)
    old.__setstate__((None, {name: getattr(desk, name) for name in before}))
    for key, w in desk.orders.items():
        restored = w.__class__.__new__(w.__class__)
        restored.__setstate__(
            (None, {n: getattr(w, n) for n in ("order", "event_id", "acknowledged", "filled_qty")})
        )
        old.orders[key] = restored
    again = pickle.loads(pickle.dumps(old))
    assert again.model == FillModel() and again.venues == {} and len(again.answered) == 0
    assert [w.triggered for w in again.orders.values()] == [False, True]
    answers = again.on_market(quote("iex", "9.90", 100, "9.99", 100, NOON + 1))
    assert fills(answers) == [("iex", "100.000000", "9.9900")]  # the limit, not the stop


def test_a_held_ioc_is_decided_at_the_open_against_the_first_regular_quote():
    desk = desk_at(ns(13, 0), iex=("9.90", 100, "9.95", 100))  # pre-market quote
    ioc = buy(status=OrderStatus.ACCEPTED, time_in_force="ioc", qty=D("150"))
    limit = buy(status=OrderStatus.ACCEPTED, limit_price=D("9.97"), qty=D("10"))
    assert desk.on_order_message(new_msg(ioc, 1)) == []  # held
    desk.on_order_message(new_msg(limit, 2))
    # the session opens with a trade: both are acknowledged, the pre-market quote is stale,
    # so nothing fills and the ioc waits for a quote of this session
    opened = desk.on_market(trade("9.96", ns(14, 30) + 1))
    assert kinds(opened) == ["acknowledged", "acknowledged"]
    answers = desk.on_market(quote("nasdaq", "9.90", 100, "9.96", 100, ns(14, 30) + 2))
    assert [(a["kind"], a["order_id"], a.get("qty")) for a in answers] == [
        ("fill", str(ioc.id), "100.000000"),
        ("canceled", str(ioc.id), None),
    ]
    assert answers[1]["reason"] == "ioc remainder"
    assert str(limit.id) in desk.orders  # nasdaq's 100 went to the ioc, iex is stale


def test_held_orders_released_by_the_opening_quote_meet_that_quote():
    desk = desk_at(ns(13, 0), iex=("9.90", 100, "9.95", 100))
    o = buy(status=OrderStatus.ACCEPTED, limit_price=D("10.00"), qty=D("10"))
    desk.on_order_message(new_msg(o, 1))
    answers = desk.on_market(quote("iex", "9.90", 100, "9.98", 100, ns(14, 30) + 1))
    assert kinds(answers) == ["acknowledged", "fill"]
    assert fills(answers) == [("iex", "10.000000", "9.9800")]  # not the pre-market 9.95


def test_a_fill_is_stamped_with_the_time_of_the_quote_it_took_even_behind_the_clock():
    """Quotes and trades come on separate topics: a trade may move the clock before an
    earlier quote arrives. The fill keeps that quote's time."""
    desk = desk_at(iex=("9.90", 100, "10.05", 100))
    o = buy(limit_price=D("10.00"))
    desk.on_order_message(new_msg(o, 1))
    desk.on_market(trade("10.04", NOON + 50))
    answers = desk.on_market(quote("nasdaq", "9.90", 100, "9.99", 100, NOON + 20))
    assert [(a["kind"], a["at"]) for a in answers] == [("fill", NOON + 20)]
    assert desk.clock_ns == NOON + 50 and desk.event_ns == 0


# -- properties over random sessions -----------------------------------------------------

_PRICES = [D("9.97"), D("9.98"), D("9.99"), D("10.00"), D("10.01"), D("10.02"), D("10.03")]


@st.composite
def _sessions(draw) -> list[tuple]:
    """A random session of venue quotes, trades, halts, orders and cancels."""
    steps: list[tuple] = []
    placed: list[int] = []
    for n in range(draw(st.integers(5, 40))):
        kind = draw(
            st.sampled_from([*["quote"] * 4, "trade", "trade", "status", *["order"] * 3, "cancel"])
        )
        if kind == "quote":
            bid = draw(st.sampled_from(_PRICES[:5]))
            ask = draw(st.sampled_from([p for p in _PRICES if p > bid]))
            venue = draw(st.sampled_from(["iex", "nasdaq", "arca"]))
            steps.append(
                ("quote", venue, bid, draw(st.integers(0, 300)), ask, draw(st.integers(1, 300)))
            )
        elif kind == "trade":
            steps.append(("trade", draw(st.sampled_from(_PRICES)), draw(st.booleans())))
        elif kind == "status":
            steps.append(
                (
                    "status",
                    draw(st.sampled_from(["iex", "nasdaq"])),
                    draw(st.sampled_from(["trading", "trading", "halted"])),
                )
            )
        elif kind == "order":
            side = draw(st.sampled_from(["buy", "sell"]))
            otype = draw(
                st.sampled_from(["market", "limit", "stop", "stop_limit", "trailing_stop"])
            )
            tif = (
                draw(st.sampled_from(["day", "gtc", "ioc", "fok"]))
                if otype in ("market", "limit")
                else "day"
            )
            steps.append(
                (
                    "order",
                    n,
                    side,
                    otype,
                    tif,
                    D(draw(st.integers(1, 400))),
                    draw(st.sampled_from(_PRICES)),
                    draw(st.sampled_from(_PRICES)),
                )
            )
            placed.append(n)
        elif placed:
            steps.append(("cancel", draw(st.sampled_from(placed))))
    return steps


def _order_of(step: tuple):
    _, n, side, otype, tif, qty, limit, stop = step
    fields = {"id": UUID(int=n + 1), "side": side, "type": otype, "time_in_force": tif, "qty": qty}
    fields["limit_price"] = limit if otype in ("limit", "stop_limit") else None
    fields["stop_price"] = stop if otype in ("stop", "stop_limit") else None
    fields["trail_price"] = D("0.02") if otype == "trailing_stop" else None
    fields["reserve_price"] = (
        (limit if otype in ("limit", "stop_limit") else D("10.02")) if side == "buy" else None
    )
    return order(**fields)


def _play(desk: SymbolDesk, steps: list[tuple], start: int = 0) -> list[tuple[int, list[dict]]]:
    out = []
    for i, step in enumerate(steps[start:], start=start):
        at = NOON + (i + 1) * MS
        if step[0] == "quote":
            _, venue, bid, bs, ask, asz = step
            answers = desk.on_market(quote(venue, str(bid), bs, str(ask), asz, at))
        elif step[0] == "trade":
            answers = desk.on_market(trade(str(step[1]), at, ("@",) if step[2] else ("I",)))
        elif step[0] == "status":
            answers = desk.on_market(status(step[1], step[2], at))
        elif step[0] == "order":
            answers = desk.on_order_message(new_msg(_order_of(step), i, at=at))
        else:
            answers = desk.on_order_message(cancel_msg(order(id=UUID(int=step[1] + 1)), i, at=at))
        out.append((i, answers))
    return out


@settings(max_examples=150, deadline=None, derandomize=True)
@given(_sessions(), st.integers(0, 40))
def test_random_sessions_keep_the_fill_invariants_and_replay_alike(steps, cut):
    desk = desk_at()
    played = _play(desk, steps)
    orders = {str(_order_of(s).id): _order_of(s) for s in steps if s[0] == "order"}
    books: dict[str, tuple] = {}
    taken: dict[tuple[str, int, str], D] = {}
    filled: dict[str, D] = {}
    halted: set[str] = set()
    ids: list[str] = []
    ended: set[str] = set()
    for i, answers in played:
        step = steps[i]
        if step[0] == "quote":
            books[step[1]] = (step[2], step[3], step[4], step[5], i)
        elif step[0] == "status":
            (halted.add if step[2] == "halted" else halted.discard)(step[1])
        for a in answers:
            oid = a["order_id"]
            if a["kind"] == "cancel_rejected":
                continue  # a cancel of an order no longer open
            assert oid not in ended, "an answer after the order ended"
            if a["kind"] in ("canceled", "expired"):
                ended.add(oid)
            if a["kind"] != "fill":
                continue
            assert not halted, "a fill while halted"
            o, qty, price, venue = orders[oid], D(a["qty"]), D(a["price"]), a["venue"]
            ids.append(a["exec_id"])
            bid, bs, ask, asz, seq = books[venue]
            side = "ask" if o.side == "buy" else "bid"
            assert price == (ask if o.side == "buy" else bid)  # at the venue's own quote
            key = (venue, seq, side)
            taken[key] = taken.get(key, D(0)) + qty
            assert taken[key] <= (asz if o.side == "buy" else bs), "more than displayed"
            if o.side == "buy":
                assert price <= o.reserve_price
            elif o.limit_price is not None and o.type in ("limit", "stop_limit"):
                assert price >= o.limit_price
            filled[oid] = filled.get(oid, D(0)) + qty
            assert filled[oid] <= o.qty, "overfilled"
            if filled[oid] == o.qty:
                ended.add(oid)
    assert len(ids) == len(set(ids))
    # the same inputs give the same answers, also from a snapshot taken at any step
    again = desk_at()
    head = _play(again, steps[: min(cut, len(steps))])
    restored = pickle.loads(pickle.dumps(again))
    assert head + _play(restored, steps, min(cut, len(steps))) == played
