"""schemas.orders.place, pure: one test (or one parametrized case) per rule of its docstring.

Times are New York wall times on Tuesday 2026-11-24 (a full day: 09:30-16:00) and
Friday 2026-11-27 (the half day after Thanksgiving: 09:30-13:00).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from schemas.order_states import OrderStatus
from schemas.orders import (
    MarketView,
    OrderRefused,
    OrderRequest,
    OrderType,
    Side,
    TimeInForce,
    full_reservation,
    place,
)
from schemas.sessions import market_session

D = Decimal
NY = ZoneInfo("America/New_York")
TUE, HALF_DAY, SAT = date(2026, 11, 24), date(2026, 11, 27), date(2026, 11, 28)


def at(day: date, hh: int, mm: int) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=NY)


def market(
    when: datetime | None = None,
    *,
    bid: str | None = "99.9900",
    ask: str | None = "100.0000",
    tradable: bool = True,
    halted: bool = False,
) -> MarketView:
    when = when or at(TUE, 10, 0)
    return MarketView(
        now=when,
        session=market_session(when),
        tradable=tradable,
        halted=halted,
        bid=D(bid) if bid else None,
        ask=D(ask) if ask else None,
    )


def order(type: str = "limit", side: str = "buy", tif: str = "day", **kw) -> OrderRequest:
    if type in ("limit", "stop_limit"):
        kw.setdefault("limit_price", D("100.00"))
    if type in ("stop", "stop_limit"):
        kw.setdefault("stop_price", D("101.00"))
    if type == "trailing_stop" and "trail_percent" not in kw:
        kw.setdefault("trail_price", D("1.00"))
    if "notional" not in kw:
        kw.setdefault("qty", D(10))
    return OrderRequest("AAPL", Side(side), OrderType(type), TimeInForce(tif), **kw)


def refused(req: OrderRequest, view: MarketView | None = None) -> str:
    with pytest.raises(OrderRefused) as info:
        place(req, view or market())
    assert info.value.status == 422 and info.value.message
    return info.value.code


# ------------------------------------------------------------------ qty and notional


def test_qty_and_notional_are_exclusive_and_one_is_needed():
    assert refused(order("market", qty=D(1), notional=D("100"))) == "qty_and_notional"
    assert refused(order("market", qty=None)) == "qty_required"


@pytest.mark.parametrize("qty", ["0", "-1", "0.0000001", "10000001"])
def test_qty_positive_six_places_bounded(qty):
    assert refused(order(qty=D(qty))) == "invalid_qty"


def test_qty_of_six_places_is_fine():
    assert place(order(qty=D("0.000001")), market()).reserve_cash == D("0.0001")


def test_fractional_qty_needs_day():
    assert place(order(qty=D("1.5"), tif="day"), market()).status == OrderStatus.PENDING_NEW
    assert refused(order(qty=D("1.5"), tif="gtc")) == "fractional_not_allowed"
    assert refused(order("market", qty=D("1.5"), tif="ioc")) == "fractional_not_allowed"


def test_fractional_qty_not_for_trailing_stops():
    assert refused(order("trailing_stop", qty=D("1.5"))) == "fractional_not_allowed"
    assert place(order("trailing_stop", qty=D(2)), market()).reserve_cash > 0


@pytest.mark.parametrize("notional", ["0", "-5", "10.001", "1000000001"])
def test_notional_positive_in_cents_bounded(notional):
    assert refused(order("market", qty=None, notional=D(notional))) == "invalid_notional"


@pytest.mark.parametrize(
    ("type", "tif"), [("limit", "day"), ("stop", "day"), ("market", "gtc"), ("market", "ioc")]
)
def test_notional_only_for_market_day(type, tif):
    assert refused(order(type, tif=tif, qty=None, notional=D("500"))) == "notional_not_allowed"


# ------------------------------------------------------------------------ prices


@pytest.mark.parametrize(
    ("type", "missing"),
    [
        ("limit", "limit_price"),
        ("stop", "stop_price"),
        ("stop_limit", "limit_price"),
        ("stop_limit", "stop_price"),
    ],
)
def test_prices_the_type_needs(type, missing):
    assert refused(order(type, **{missing: None})) == "missing_price"


@pytest.mark.parametrize(
    ("type", "extra"),
    [
        ("market", "limit_price"),
        ("market", "stop_price"),
        ("market", "trail_price"),
        ("limit", "stop_price"),
        ("limit", "trail_percent"),
        ("stop", "limit_price"),
        ("stop_limit", "trail_price"),
        ("trailing_stop", "limit_price"),
    ],
)
def test_no_price_the_type_does_not_take(type, extra):
    assert refused(order(type, **{extra: D("1.00")})) == "unexpected_price"


def test_trailing_stop_takes_exactly_one_trail():
    assert refused(order("trailing_stop", trail_price=None)) == "missing_price"
    both = order("trailing_stop", trail_price=D("1.00"), trail_percent=D("2"))
    assert refused(both) == "unexpected_price"


@pytest.mark.parametrize("pct", ["0", "100", "-1", "1.00001"])
def test_trail_percent_between_0_and_100_four_places(pct):
    code = refused(order("trailing_stop", trail_price=None, trail_percent=D(pct)))
    assert code == "invalid_trail_percent"


@pytest.mark.parametrize(
    ("price", "ok"),
    [
        ("1.00", True),  # at $1: cents
        ("1.01", True),
        ("1.005", False),
        ("100.001", False),
        ("250.10", True),
        ("0.9999", True),  # below $1: hundredths of a cent
        ("0.5001", True),
        ("0.00005", False),
        ("0.99995", False),
    ],
)
def test_ticks_at_above_and_below_one_dollar(price, ok):
    req = order(limit_price=D(price))
    if ok:
        assert place(req, market()).reserve_price == D(price)
    else:
        assert refused(req) == "invalid_tick"


def test_every_price_field_is_on_the_tick():
    assert refused(order("stop", stop_price=D("101.001"))) == "invalid_tick"
    assert refused(order("trailing_stop", trail_price=D("1.001"))) == "invalid_tick"


@pytest.mark.parametrize("price", ["0", "-1.00", "1000000.01"])
def test_prices_positive_and_bounded(price):
    assert refused(order(limit_price=D(price))) == "invalid_price"


# ---------------------------------------------------------------- time in force


@pytest.mark.parametrize("type", ["market", "limit"])
@pytest.mark.parametrize("tif", list(TimeInForce))
def test_market_and_limit_take_every_time_in_force(type, tif):
    view = market(at(TUE, 8, 0))  # before both auction cut-offs
    assert place(order(type, tif=tif.value), view).status == OrderStatus.ACCEPTED


@pytest.mark.parametrize("type", ["stop", "stop_limit", "trailing_stop"])
@pytest.mark.parametrize("tif", ["opg", "cls", "ioc", "fok"])
def test_stop_types_take_day_and_gtc_only(type, tif):
    assert refused(order(type, tif=tif)) == "invalid_time_in_force"
    assert place(order(type, tif="gtc"), market()).status == OrderStatus.PENDING_NEW


@pytest.mark.parametrize(
    ("tif", "hh", "mm", "ok"),
    [
        ("opg", 9, 27, True),
        ("opg", 9, 28, False),  # still pre-market, but past the opening auction's cut-off
        ("opg", 9, 29, False),
        ("opg", 15, 59, False),
        ("opg", 16, 0, True),  # after the close: for the next day's open
        ("cls", 15, 49, True),
        ("cls", 15, 50, False),
        ("cls", 15, 59, False),
        ("cls", 16, 0, True),
        ("cls", 8, 0, True),
    ],
)
def test_auction_cutoffs_new_york(tif, hh, mm, ok):
    req, view = order(tif=tif), market(at(TUE, hh, mm))
    if ok:
        place(req, view)
    else:
        assert refused(req, view) == "auction_closed"


def test_closing_auction_cutoff_on_a_half_day():
    assert place(order(tif="cls"), market(at(HALF_DAY, 12, 49)))
    assert refused(order(tif="cls"), market(at(HALF_DAY, 12, 50))) == "auction_closed"


# ---------------------------------------------------------------- extended hours


@pytest.mark.parametrize(
    ("type", "tif"), [("market", "day"), ("stop_limit", "day"), ("limit", "gtc"), ("limit", "ioc")]
)
def test_extended_hours_only_limit_day(type, tif):
    assert refused(order(type, tif=tif, extended_hours=True)) == "extended_hours_not_allowed"


@pytest.mark.parametrize(
    ("when", "status"),
    [
        (at(TUE, 4, 0), OrderStatus.PENDING_NEW),  # pre-market opens
        (at(TUE, 9, 29), OrderStatus.PENDING_NEW),
        (at(TUE, 12, 0), OrderStatus.PENDING_NEW),
        (at(TUE, 16, 0), OrderStatus.PENDING_NEW),  # after-market
        (at(TUE, 19, 59), OrderStatus.PENDING_NEW),
        (at(TUE, 20, 0), OrderStatus.ACCEPTED),  # after-market over
        (at(TUE, 3, 59), OrderStatus.ACCEPTED),
        (at(SAT, 10, 0), OrderStatus.ACCEPTED),
        (at(HALF_DAY, 13, 30), OrderStatus.PENDING_NEW),  # a half day's after-market
    ],
)
def test_extended_hours_limit_works_in_pre_and_post(when, status):
    assert place(order(extended_hours=True), market(when)).status == status


# --------------------------------------------------------------- symbol and halts


def test_symbol_must_be_tradable():
    assert refused(order(), market(tradable=False)) == "symbol_not_tradable"


@pytest.mark.parametrize("type", ["market", "stop", "trailing_stop"])
def test_halted_refuses_orders_that_execute_at_market(type):
    assert refused(order(type), market(halted=True)) == "symbol_halted"


@pytest.mark.parametrize("type", ["limit", "stop_limit"])
def test_halted_accepts_limit_orders_to_rest(type):
    assert place(order(type), market(halted=True)).status == OrderStatus.PENDING_NEW


# ----------------------------------------------------------------------- sessions


@pytest.mark.parametrize(
    ("when", "status"),
    [
        (at(TUE, 9, 29), OrderStatus.ACCEPTED),
        (at(TUE, 9, 30), OrderStatus.PENDING_NEW),
        (at(TUE, 15, 59), OrderStatus.PENDING_NEW),
        (at(TUE, 16, 0), OrderStatus.ACCEPTED),
        (at(TUE, 22, 0), OrderStatus.ACCEPTED),
        (at(SAT, 11, 0), OrderStatus.ACCEPTED),
        (at(date(2026, 11, 26), 11, 0), OrderStatus.ACCEPTED),  # Thanksgiving
        (at(HALF_DAY, 12, 59), OrderStatus.PENDING_NEW),
        (at(HALF_DAY, 13, 0), OrderStatus.ACCEPTED),  # half day: closed at 13:00
    ],
)
def test_outside_the_regular_session_orders_are_held(when, status):
    assert place(order("market"), market(when)).status == status


# ------------------------------------------------------------------- reservations


def test_limit_buy_reserves_qty_times_limit():
    p = place(order(limit_price=D("100.05"), qty=D(10)), market())
    assert (p.reserve_price, p.reserve_cash, p.reserve_qty) == (D("100.05"), D("1000.5000"), 0)


def test_stop_limit_buy_reserves_at_the_limit():
    p = place(order("stop_limit", limit_price=D("102.00"), stop_price=D("101.00")), market())
    assert p.reserve_cash == D("1020.0000")


def test_market_buy_reserves_ask_plus_collar():
    p = place(order("market", qty=D(10)), market(ask="100.0000"))
    assert (p.reserve_price, p.reserve_cash) == (D("105.0000"), D("1050.0000"))


def test_collar_price_and_cash_round_up():
    # 0.3333 x 1.05 = 0.349965 -> 0.3500; 0.333333 x 0.3500 = 0.11666655 -> 0.1167
    p = place(order("market", qty=D("0.333333")), market(bid="0.3300", ask="0.3333"))
    assert (p.reserve_price, p.reserve_cash) == (D("0.3500"), D("0.1167"))


def test_stop_buy_reserves_higher_of_stop_and_ask_plus_collar():
    above = place(order("stop", stop_price=D("110.00")), market(ask="100.0000"))
    assert above.reserve_price == D("115.5000")
    below = place(order("stop", stop_price=D("90.00")), market(ask="100.0000"))
    assert below.reserve_price == D("105.0000")
    no_quote = place(order("stop", stop_price=D("90.00")), market(bid=None, ask=None))
    assert no_quote.reserve_price == D("94.5000")


def test_trailing_buy_reserves_ask_plus_trail_plus_collar():
    by_price = place(order("trailing_stop", trail_price=D("2.00")), market(ask="100.0000"))
    assert by_price.reserve_price == D("107.1000")  # 102 x 1.05
    by_pct = place(
        order("trailing_stop", trail_price=None, trail_percent=D("3")), market(ask="100.0000")
    )
    assert by_pct.reserve_price == D("108.1500")  # 103 x 1.05


@pytest.mark.parametrize("type", ["market", "trailing_stop"])
def test_buy_at_market_without_an_ask_is_refused(type):
    assert refused(order(type), market(bid=None, ask=None)) == "no_quote"


def test_notional_buy_reserves_the_notional():
    p = place(order("market", qty=None, notional=D("250.50")), market())
    assert (p.reserve_cash, p.reserve_qty) == (D("250.50"), 0)


def test_sells_reserve_shares_not_cash():
    p = place(order("limit", side="sell", qty=D("3.5")), market())
    assert (p.reserve_cash, p.reserve_qty) == (0, D("3.5"))
    p = place(order("market", side="sell", qty=D(4)), market(bid=None, ask=None))
    assert p.reserve_qty == D(4)


def test_notional_sell_reserves_shares_at_the_collared_bid():
    # bid 99.99 x 0.95 = 94.9905 (down); 1000 / 94.9905 = 10.52736... -> 10.527369 (up)
    p = place(order("market", side="sell", qty=None, notional=D("1000")), market(bid="99.9900"))
    assert p.reserve_price == D("94.9905")
    assert p.reserve_qty == D("10.527369")
    no_bid = order("market", side="sell", qty=None, notional=D("1000"))
    assert refused(no_bid, market(bid=None, ask=None)) == "no_quote"


@pytest.mark.parametrize(
    "req",
    [
        order(limit_price=D("100.05"), qty=D("3.333333")),
        order("market", qty=D("7")),
        order("market", qty=None, notional=D("99.99")),
        order("market", side="sell", qty=None, notional=D("500")),
        order("stop_limit", side="sell", qty=D(2)),
    ],
    ids=str,
)
def test_full_reservation_is_the_same_arithmetic_as_place(req):
    p = place(req, market())
    assert full_reservation(req.side, req.qty, req.notional, p.reserve_price) == (
        p.reserve_cash,
        p.reserve_qty,
    )


def test_rules_are_checked_before_the_market():
    """A request breaking a rule is refused with that rule's code whatever the market."""
    bad = replace(order(), qty=D(0))
    assert refused(bad, market(tradable=False, halted=True)) == "invalid_qty"
