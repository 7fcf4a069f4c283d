"""The execution side's desk for one symbol (schemas/execution.py): every answer path,
deterministic ids, the replace rules, held orders released at the open, repeats."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from decimal import Decimal as D
from uuid import UUID, uuid4

import orjson
import pytest

from schemas.execution import DEDUP_WINDOW, SymbolDesk, regular_window
from schemas.oms import EXECUTION_KINDS, Order, decode, encode, order_wire
from schemas.order_states import OrderStatus

ACCOUNT = UUID("00000000-0000-0000-0000-0000000000aa")
T = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)  # a Tuesday, 10:00 New York
NS = 1_000_000_000


def ns(hour: int, minute: int = 0, day: int = 24) -> int:
    """ns of a UTC wall time on 2026-11-<day> (New York is UTC-5 then)."""
    return int(datetime(2026, 11, day, hour, minute, tzinfo=UTC).timestamp()) * NS


OPEN_24 = ns(14, 30)  # 09:30 New York


def order(status: OrderStatus = OrderStatus.PENDING_NEW, symbol: str = "AAPL", **kw) -> Order:
    fields = {
        "id": uuid4(),
        "account_id": ACCOUNT,
        "client_order_id": "c",
        "symbol": symbol,
        "side": "buy",
        "type": "limit",
        "time_in_force": "day",
        "qty": D("10"),
        "notional": None,
        "filled_qty": D("0"),
        "filled_avg_price": None,
        "limit_price": D("100.00"),
        "stop_price": None,
        "trail_price": None,
        "trail_percent": None,
        "hwm": None,
        "extended_hours": False,
        "status": status,
        "reject_reason": None,
        "reserve_price": D("100.00"),
        "reserved_cash": D("1000.0000"),
        "reserved_qty": D("0"),
        "created_at": T,
        "updated_at": T,
        "submitted_at": None,
        "filled_at": None,
        "canceled_at": None,
        "expired_at": None,
        "replaced_at": None,
        "failed_at": None,
        "replaced_by": None,
        "replaces": None,
        "version": 1,
    }
    return Order(**{**fields, **kw})


def wire(message: dict) -> dict:
    """Through the wire format, as the flow hands it to the desk."""
    return decode(encode(message))


def new_msg(o: Order, n: int, at: int = 7) -> dict:
    return wire({"event_id": f"o:{n}", "kind": "new", "at": at, "order": order_wire(o)})


def cancel_msg(o: Order, n: int, at: int = 8) -> dict:
    return wire(
        {
            "event_id": f"o:{n}",
            "kind": "cancel",
            "at": at,
            "order_id": o.id,
            "account_id": o.account_id,
            "symbol": o.symbol,
        }
    )


def replace_msg(old: Order, new: Order, n: int, expected: str = "0", at: int = 9) -> dict:
    return wire(
        {
            "event_id": f"o:{n}",
            "kind": "replace",
            "at": at,
            "order_id": old.id,
            "account_id": old.account_id,
            "symbol": old.symbol,
            "expected_filled_qty": D(expected),
            "order": order_wire(new),
        }
    )


def ids(o: Order) -> dict:
    return {"order_id": str(o.id), "account_id": str(ACCOUNT), "symbol": o.symbol}


# -- new ---------------------------------------------------------------------------------


def test_a_pending_new_order_is_acknowledged_at_once_and_kept():
    desk, o = SymbolDesk("AAPL"), order()
    answers = desk.on_order_message(new_msg(o, 1, at=123))
    assert answers == [
        {"event_id": "acknowledged:o:1", "kind": "acknowledged", "at": 123, **ids(o)}
    ]
    assert list(desk.orders) == [str(o.id)]
    assert desk.orders[str(o.id)].order == o  # the wire round trip keeps every field


def test_an_accepted_order_is_held_until_the_feed_enters_the_regular_session():
    desk, a, b = SymbolDesk("AAPL"), order(OrderStatus.ACCEPTED), order(OrderStatus.ACCEPTED)
    assert desk.on_order_message(new_msg(a, 1)) == []  # no feed time yet: held
    assert desk.on_market_time(ns(13, 0)) == []  # 08:00 New York, pre-market
    assert desk.on_order_message(new_msg(b, 2)) == []
    assert desk.on_market_time(ns(14, 29)) == []
    assert [w.held for w in desk.orders.values()] == [True, True]
    released = desk.on_market_time(ns(14, 30) + 5)  # 09:30:00.000000005
    assert released == [
        {"event_id": "acknowledged:o:1", "kind": "acknowledged", "at": OPEN_24, **ids(a)},
        {"event_id": "acknowledged:o:2", "kind": "acknowledged", "at": OPEN_24, **ids(b)},
    ]
    assert desk.on_market_time(ns(15, 0)) == []  # once only
    assert not any(w.held for w in desk.orders.values())


def test_an_accepted_order_arriving_while_the_feed_is_in_session_is_acknowledged_at_once():
    desk, o = SymbolDesk("AAPL"), order(OrderStatus.ACCEPTED)
    desk.on_market_time(ns(15, 0))
    assert desk.on_order_message(new_msg(o, 3, at=55)) == [
        {"event_id": "acknowledged:o:3", "kind": "acknowledged", "at": 55, **ids(o)}
    ]


@pytest.mark.parametrize(
    "clock",
    [ns(21, 30), ns(12, 0, day=28), ns(0, 30, day=25)],  # after hours, a Saturday, night
)
def test_held_orders_stay_held_outside_the_regular_session(clock):
    desk = SymbolDesk("AAPL")
    desk.on_order_message(new_msg(order(OrderStatus.ACCEPTED), 1))
    assert desk.on_market_time(clock) == []
    assert next(iter(desk.orders.values())).held


def test_held_orders_wait_over_a_weekend_for_mondays_open():
    desk, o = SymbolDesk("AAPL"), order(OrderStatus.ACCEPTED)
    desk.on_market_time(ns(22, 0, day=27))  # Friday evening
    desk.on_order_message(new_msg(o, 1))
    assert desk.on_market_time(ns(15, 0, day=28)) == []  # Saturday
    monday_open = ns(14, 30, day=30)
    assert desk.on_market_time(monday_open - 1) == []
    assert [a["at"] for a in desk.on_market_time(monday_open)] == [monday_open]


def test_the_feed_clock_only_moves_forward():
    desk = SymbolDesk("AAPL")
    desk.on_market_time(ns(13, 0))
    desk.on_order_message(new_msg(order(OrderStatus.ACCEPTED), 1))
    assert desk.on_market_time(ns(12, 0)) == []
    assert desk.clock_ns == ns(13, 0)


def test_regular_window_names_the_open_and_when_to_ask_again():
    assert regular_window(ns(15, 0)) == (OPEN_24, ns(21, 0))
    assert regular_window(ns(10, 0)) == (None, OPEN_24)  # 05:00 New York
    assert regular_window(ns(22, 0)) == (None, ns(5, 0, day=25))  # after hours: midnight NY
    half_day_close = ns(18, 0, day=27)  # the day after Thanksgiving closes at 13:00
    assert regular_window(ns(17, 0, day=27)) == (ns(14, 30, day=27), half_day_close)


# -- cancel ------------------------------------------------------------------------------


def test_cancel_of_an_open_order_cancels_and_removes_it():
    desk, o = SymbolDesk("AAPL"), order()
    desk.on_order_message(new_msg(o, 1))
    answers = desk.on_order_message(cancel_msg(o, 2, at=99))
    assert answers == [
        {"event_id": "canceled:o:2", "kind": "canceled", "at": 99, "reason": "requested", **ids(o)}
    ]
    assert desk.orders == {}


def test_cancel_of_a_held_order_cancels_it_and_it_is_never_acknowledged():
    desk, o = SymbolDesk("AAPL"), order(OrderStatus.ACCEPTED)
    desk.on_order_message(new_msg(o, 1))
    assert [a["kind"] for a in desk.on_order_message(cancel_msg(o, 2))] == ["canceled"]
    assert desk.on_market_time(ns(15, 0)) == []


@pytest.mark.parametrize("history", ["unknown", "canceled", "replaced"])
def test_cancel_of_an_order_not_open_here_is_rejected(history):
    desk, o = SymbolDesk("AAPL"), order()
    if history != "unknown":
        desk.on_order_message(new_msg(o, 1))
    if history == "canceled":
        desk.on_order_message(cancel_msg(o, 2))
    if history == "replaced":
        desk.on_order_message(replace_msg(o, order(qty=D("5")), 2))
    answers = desk.on_order_message(cancel_msg(o, 3, at=42))
    assert answers == [
        {
            "event_id": "cancel_rejected:o:3",
            "kind": "cancel_rejected",
            "at": 42,
            "reason": "not_open",
            **ids(o),
        }
    ]


# -- replace -----------------------------------------------------------------------------


def test_replace_of_an_open_order_replaces_it_and_the_new_order_works():
    desk, old = SymbolDesk("AAPL"), order()
    new = order(qty=D("20"), replaces=old.id)
    desk.on_order_message(new_msg(old, 1))
    answers = desk.on_order_message(replace_msg(old, new, 2, at=77))
    assert answers == [
        {
            "event_id": "replaced:o:2",
            "kind": "replaced",
            "at": 77,
            "replaced_by": str(new.id),
            **ids(old),
        }
    ]
    assert list(desk.orders) == [str(new.id)]
    working = desk.orders[str(new.id)]
    assert working.order == new and working.acknowledged and working.event_id == "o:2"
    # the new order is the one that is open now: it can be canceled, the old one not
    assert desk.on_order_message(cancel_msg(old, 3))[0]["kind"] == "cancel_rejected"
    assert desk.on_order_message(cancel_msg(new, 4))[0]["kind"] == "canceled"


def test_replace_of_a_held_order_is_acknowledged_by_the_replace_itself():
    desk, old = SymbolDesk("AAPL"), order(OrderStatus.ACCEPTED)
    new = order(OrderStatus.ACCEPTED, replaces=old.id)
    desk.on_order_message(new_msg(old, 1))
    assert [a["kind"] for a in desk.on_order_message(replace_msg(old, new, 2))] == ["replaced"]
    assert desk.on_market_time(ns(15, 0)) == []  # no second acknowledgement at the open


def test_replace_with_a_stale_filled_qty_is_rejected_and_the_old_order_keeps_working():
    desk, old = SymbolDesk("AAPL"), order()
    new = order(replaces=old.id)
    desk.on_order_message(new_msg(old, 1))
    desk.orders[str(old.id)].filled_qty = D("3")  # what a fill (issue 5) will do
    answers = desk.on_order_message(replace_msg(old, new, 2, expected="0", at=5))
    assert answers == [
        {
            "event_id": "replace_rejected:o:2",
            "kind": "replace_rejected",
            "at": 5,
            "replaced_by": str(new.id),
            "reason": "filled_qty_changed: expected 0, filled 3",
            **ids(old),
        }
    ]
    assert list(desk.orders) == [str(old.id)]
    # with the filled quantity the ledger now knows, the replace goes through
    assert desk.on_order_message(replace_msg(old, new, 3, expected="3.000000"))[0]["kind"] == (
        "replaced"
    )


def test_replace_of_an_order_not_open_here_is_rejected():
    desk, old = SymbolDesk("AAPL"), order()
    new = order(replaces=old.id)
    answers = desk.on_order_message(replace_msg(old, new, 2))
    assert answers[0]["kind"] == "replace_rejected"
    assert answers[0]["replaced_by"] == str(new.id)
    assert answers[0]["reason"].startswith("not_open")
    assert desk.orders == {}


@pytest.mark.parametrize("bad", ["symbol", "known_id", "unreadable"])
def test_an_invalid_replacing_order_is_rejected_and_the_old_one_keeps_working(bad):
    desk, old, other = SymbolDesk("AAPL"), order(), order()
    desk.on_order_message(new_msg(old, 1))
    desk.on_order_message(new_msg(other, 2))
    new = {"symbol": order(symbol="MSFT"), "known_id": other, "unreadable": order()}[bad]
    msg = replace_msg(old, new, 3)
    if bad == "unreadable":
        del msg["order"]["side"]
    answers = desk.on_order_message(msg)
    assert answers[0]["kind"] == "replace_rejected"
    assert answers[0]["reason"].startswith(("unreadable", "invalid"))
    assert list(desk.orders) == [str(old.id), str(other.id)]


# -- determinism and repeats -------------------------------------------------------------


def script(desk: SymbolDesk) -> list[dict]:
    a, b, c = (
        order(OrderStatus.ACCEPTED, id=UUID(int=1)),
        order(id=UUID(int=2)),
        order(id=UUID(int=3)),
    )
    b2 = order(id=UUID(int=4), replaces=b.id, qty=D("1"))
    out = []
    out += desk.on_order_message(new_msg(a, 1, at=1))
    out += desk.on_market_time(ns(13, 0))
    out += desk.on_order_message(new_msg(b, 2, at=2))
    out += desk.on_order_message(new_msg(c, 3, at=3))
    out += desk.on_order_message(replace_msg(b, b2, 4, at=4))
    out += desk.on_order_message(cancel_msg(c, 5, at=5))
    out += desk.on_order_message(cancel_msg(c, 6, at=6))
    out += desk.on_market_time(ns(16, 0))
    return out


def test_the_same_messages_give_the_same_answers_and_ids():
    first, second = script(SymbolDesk("AAPL")), script(SymbolDesk("AAPL"))
    assert first == second
    assert [a["event_id"] for a in first] == [
        "acknowledged:o:2",
        "acknowledged:o:3",
        "replaced:o:4",
        "canceled:o:5",
        "cancel_rejected:o:6",
        "acknowledged:o:1",
    ]
    assert first[-1]["at"] == OPEN_24 and first[0]["at"] == 2
    assert {a["kind"] for a in first} <= set(EXECUTION_KINDS)
    assert all(orjson.loads(encode(a)) == a for a in first)  # plain JSON already


def test_a_snapshot_restores_the_desk_and_a_replay_from_it_repeats_the_answers():
    desk, o = SymbolDesk("AAPL"), order(OrderStatus.ACCEPTED)
    desk.on_market_time(ns(13, 0))
    desk.on_order_message(new_msg(o, 1))
    saved = pickle.dumps(desk)  # what Bytewax recovery keeps
    later = [cancel_msg(o, 2)]
    first = [a for m in later for a in desk.on_order_message(m)] + desk.on_market_time(ns(15))
    again = pickle.loads(saved)
    assert [a for m in later for a in again.on_order_message(m)] + again.on_market_time(
        ns(15)
    ) == first


def test_a_repeated_message_is_answered_once_and_changes_nothing():
    desk, o, other = SymbolDesk("AAPL"), order(), order()
    first = desk.on_order_message(new_msg(o, 1))
    assert desk.on_order_message(new_msg(o, 1)) == []
    assert first[0]["event_id"] == "acknowledged:o:1"
    assert desk.on_order_message(cancel_msg(o, 2))[0]["kind"] == "canceled"
    # the repeated cancel must not turn into a cancel_rejected, nor the repeated new
    # bring the canceled order back
    assert desk.on_order_message(cancel_msg(o, 2)) == []
    assert desk.on_order_message(new_msg(o, 1)) == []
    assert desk.orders == {}
    # a new order sent again under another message id is not kept twice
    desk.on_order_message(new_msg(other, 3))
    assert desk.on_order_message(new_msg(other, 4)) == []
    assert list(desk.orders) == [str(other.id)]


def test_the_repeat_windows_are_bounded():
    desk = SymbolDesk("AAPL")
    for n in range(DEDUP_WINDOW + 10):
        o = order()
        desk.on_order_message(new_msg(o, 2 * n))
        desk.on_order_message(cancel_msg(o, 2 * n + 1))
    assert len(desk.answered) == DEDUP_WINDOW and len(desk.closed) == DEDUP_WINDOW
    assert desk.orders == {}


def test_an_unknown_kind_is_ignored():
    desk = SymbolDesk("AAPL")
    assert desk.on_order_message({"event_id": "o:1", "kind": "amend", "at": 1}) == []


def test_an_unreadable_new_order_is_rejected_when_its_ids_are_there():
    desk, o = SymbolDesk("AAPL"), order()
    msg = new_msg(o, 1)
    msg["order"]["qty"] = "ten"
    assert desk.on_order_message(msg) == [
        {
            "event_id": "rejected:o:1",
            "kind": "rejected",
            "at": 7,
            "reason": "unreadable order: a field is not a decimal number",
            **ids(o),
        }
    ]
    assert desk.orders == {}
    assert desk.on_order_message({"event_id": "o:2", "kind": "new", "at": 1, "order": {}}) == []
    other = new_msg(order(symbol="MSFT"), 3)
    assert desk.on_order_message(other)[0]["reason"] == (
        "unreadable order: ValueError: an order for MSFT at the AAPL desk"
    )
