"""Fill accounting (schemas/positions.py): orders, reservations, FIFO lots, cash. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.positions import FillRefused, Lot, OrderTerms, apply_fill, close_fifo

T0 = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)


def buy(qty="10", limit="100.00", filled="0", value="0", reserved=None) -> OrderTerms:
    reserved = D(reserved) if reserved is not None else (D(qty) - D(filled)) * D(limit)
    return OrderTerms("buy", D(qty), None, D(limit), D(filled), D(value), reserved, D(0))


def sell(qty="10", filled="0", value="0") -> OrderTerms:
    return OrderTerms("sell", D(qty), None, None, D(filled), D(value), D(0), D(qty) - D(filled))


def test_a_partial_buy_releases_the_reservation_of_what_filled():
    effect = apply_fill(buy(), D("4"), D("99.50"), [], D(0), T0)
    assert (effect.filled_qty, effect.complete) == (D(4), False)
    assert effect.cash_delta == D("-398.0000")
    assert effect.release_cash == D("400.0000")  # 4 x the 100.00 limit, not the fill price
    assert effect.position_qty_delta == 4 and effect.cost_basis_delta == D("398.00")
    assert effect.filled_avg_price == D("99.5000")


def test_the_last_fill_releases_everything_left():
    order = buy(filled="4", value="398", reserved="600.0000")
    effect = apply_fill(order, D("6"), D("99.00"), [], D(4), T0)
    assert effect.complete and effect.release_cash == D("600.0000")
    assert effect.filled_avg_price == D("99.2000")  # (398 + 594) / 10


def test_overfill_oversell_and_above_reserve_are_refused():
    with pytest.raises(FillRefused, match="overfill"):
        apply_fill(buy(), D("11"), D("99"), [], D(0), T0)
    with pytest.raises(FillRefused, match="reserve price"):
        apply_fill(buy(), D("1"), D("100.01"), [], D(0), T0)
    with pytest.raises(FillRefused, match="oversell"):
        apply_fill(sell(), D("5"), D("99"), [Lot(1, T0, D(3), D(90))], D(3), T0)


def test_a_notional_buy_is_done_when_less_than_a_cent_is_left():
    order = OrderTerms("buy", None, D("1000.00"), D("105.0000"), D(0), D(0), D("1000.00"), D(0))
    effect = apply_fill(order, D("9.523809"), D("105.0000"), [], D(0), T0)
    assert effect.complete  # 999.999945: less than a cent short
    assert effect.cash_delta == D("-999.9999") and effect.release_cash == D("1000.00")


def test_sells_close_lots_first_in_first_out_with_gains():
    lots = [
        Lot(2, T0 - timedelta(days=10), D("5"), D("120.00")),
        Lot(1, T0 - timedelta(days=400), D("5"), D("100.00")),  # older: closed first
    ]
    effect = apply_fill(sell(qty="7"), D("7"), D("130.00"), lots, D(10), T0)
    assert [(c.lot_id, c.qty, c.realized_pnl, c.long_term) for c in effect.closures] == [
        (1, D(5), D("150.0000"), True),
        (2, D(2), D("20.0000"), False),
    ]
    assert effect.cash_delta == D("910.0000") and effect.release_qty == D(7)
    assert effect.cost_basis_delta == -(D(500) + D(240))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.decimals(min_value="0.000001", max_value="50", places=6),
            st.decimals(min_value="0.0001", max_value="500", places=4),
        ),
        max_size=30,
    )
)
def test_a_position_is_the_sum_of_its_fills(fills):
    """Whatever the fills, qty and cost basis equal what the open lots hold, and realized
    P&L plus the open cost equals what the sells got minus what the buys cost."""
    lots: list[Lot] = []
    qty, cost, realized, bought, sold = D(0), D(0), D(0), D(0), D(0)
    for n, (is_buy, q, p) in enumerate(fills):
        at = T0 + timedelta(minutes=n)
        if is_buy:
            e = apply_fill(buy(qty=str(q), limit=str(p)), q, p, lots, qty, at)
            lots.append(Lot(n, at, q, p))
            bought += q * p
        else:
            q = min(q, qty)
            if q <= 0:
                continue
            e = apply_fill(sell(qty=str(q)), q, p, lots, qty, at)
            by_id = {c.lot_id: c for c in e.closures}
            lots = [
                Lot(lot.id, lot.opened_at, lot.remaining_qty - by_id[lot.id].qty, lot.price)
                if lot.id in by_id
                else lot
                for lot in lots
            ]
            realized += sum(c.realized_pnl for c in e.closures)
            sold += q * p
        qty += e.position_qty_delta
        cost += e.cost_basis_delta
        assert qty >= 0
        assert qty == sum(lot.remaining_qty for lot in lots)
        assert cost == sum(lot.remaining_qty * lot.price for lot in lots)
    assert realized == sold - (bought - cost)


def test_close_fifo_refuses_more_than_the_lots_hold():
    with pytest.raises(FillRefused):
        close_fifo([Lot(1, T0, D(2), D(10))], D(3), D(11), T0)


def test_a_loss_too_small_to_show_is_zero_not_minus_zero():
    from schemas.portfolio import value_portfolio, value_position

    p = value_position("X", D(5), D(0), D("941.10"), D("188.25"), D("188.26"))
    portfolio = value_portfolio(D("99058.90"), D(0), [p])
    assert str(portfolio.day_change_percent) == "0.000000"
