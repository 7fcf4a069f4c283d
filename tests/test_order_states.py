"""The order state machine, exhaustively: every (status, event) pair, reachability,
terminal statuses, and the business rules the table encodes (schemas/order_states.py)."""

from __future__ import annotations

import itertools
from collections import deque

import pytest

from schemas.order_states import (
    OPEN,
    RESTORE,
    TABLE,
    TERMINAL,
    IllegalTransition,
    OrderEvent,
    OrderStatus,
    allowed,
    transition,
)

S, E = OrderStatus, OrderEvent
PAIRS = list(itertools.product(OrderStatus, OrderEvent))


@pytest.mark.parametrize(("status", "event"), PAIRS, ids=lambda v: str(v))
def test_every_pair(status: OrderStatus, event: OrderEvent) -> None:
    target = TABLE.get((status, event))
    assert allowed(status, event) == (target is not None)
    if target is None:
        for fills in (False, True):
            with pytest.raises(IllegalTransition) as info:
                transition(status, event, has_fills=fills)
            assert (info.value.status, info.value.event) == (status, event)
            assert str(status) in str(info.value) and str(event) in str(info.value)
        return
    if target == RESTORE:
        assert transition(status, event, has_fills=False) == S.NEW
        assert transition(status, event, has_fills=True) == S.PARTIALLY_FILLED
    else:
        assert isinstance(target, OrderStatus)
        for fills in (False, True):
            assert transition(status, event, has_fills=fills) == target


def test_table_keys_and_targets_are_well_formed() -> None:
    for (status, event), target in TABLE.items():
        assert isinstance(status, OrderStatus) and isinstance(event, OrderEvent)
        assert target == RESTORE or isinstance(target, OrderStatus)
    # RESTORE is only for refused requests
    restores = {k for k, v in TABLE.items() if v == RESTORE}
    assert restores == {(S.PENDING_CANCEL, E.CANCEL_REJECT), (S.PENDING_REPLACE, E.REPLACE_REJECT)}


def test_open_is_exactly_the_non_terminal_statuses() -> None:
    assert set(OPEN) == set(OrderStatus) - set(TERMINAL)
    assert not set(OPEN) & set(TERMINAL)
    assert set(TERMINAL) == {S.FILLED, S.CANCELED, S.EXPIRED, S.REPLACED, S.REJECTED}
    assert set(OPEN) == {
        S.ACCEPTED,
        S.PENDING_NEW,
        S.NEW,
        S.PARTIALLY_FILLED,
        S.PENDING_CANCEL,
        S.PENDING_REPLACE,
    }


@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_terminal_statuses_accept_no_event(status: OrderStatus) -> None:
    for event in OrderEvent:
        assert not allowed(status, event)
        with pytest.raises(IllegalTransition):
            transition(status, event)
    assert not any(s == status for s, _ in TABLE)


def _targets(status: OrderStatus, event: OrderEvent) -> set[OrderStatus]:
    return {transition(status, event, has_fills=f) for f in (False, True) if allowed(status, event)}


def test_every_status_is_reachable_from_the_initial_statuses() -> None:
    seen = {S.ACCEPTED, S.PENDING_NEW}
    todo = deque(seen)
    while todo:
        status = todo.popleft()
        for event in OrderEvent:
            for target in _targets(status, event):
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
    assert seen == set(OrderStatus)


def test_every_open_status_can_still_end() -> None:
    """No open status is a trap: from each, some path reaches a terminal status."""
    for start in OPEN:
        seen, todo = {start}, deque([start])
        while todo:
            status = todo.popleft()
            for event in OrderEvent:
                for target in _targets(status, event) - seen:
                    seen.add(target)
                    todo.append(target)
        assert seen & TERMINAL, start


def test_no_transition_leaves_a_terminal_status() -> None:
    for (status, _event), _target in TABLE.items():
        assert status not in TERMINAL


# -- business rules, spelled out -----------------------------------------------------


def _from(event: OrderEvent) -> set[OrderStatus]:
    return {s for s in OrderStatus if allowed(s, event)}


def test_cancel_requests() -> None:
    assert _from(E.REQUEST_CANCEL) == {S.ACCEPTED, S.PENDING_NEW, S.NEW, S.PARTIALLY_FILLED}
    for s in _from(E.REQUEST_CANCEL):
        assert transition(s, E.REQUEST_CANCEL) == S.PENDING_CANCEL
    # filled (or otherwise closed) orders cannot be canceled; a request is not repeated
    for s in (S.FILLED, S.CANCELED, S.PENDING_CANCEL, S.PENDING_REPLACE, S.REPLACED):
        with pytest.raises(IllegalTransition):
            transition(s, E.REQUEST_CANCEL)


def test_confirmed_cancels() -> None:
    assert _from(E.CANCEL) == {
        S.ACCEPTED,
        S.PENDING_NEW,
        S.NEW,
        S.PARTIALLY_FILLED,
        S.PENDING_CANCEL,
    }
    assert {transition(s, E.CANCEL) for s in _from(E.CANCEL)} == {S.CANCELED}
    # a pending replace is answered by replaced / replace_rejected, not canceled
    assert not allowed(S.PENDING_REPLACE, E.CANCEL)


def test_cancel_reject_restores_by_fills() -> None:
    assert _from(E.CANCEL_REJECT) == {S.PENDING_CANCEL}
    assert transition(S.PENDING_CANCEL, E.CANCEL_REJECT) == S.NEW
    assert transition(S.PENDING_CANCEL, E.CANCEL_REJECT, has_fills=True) == S.PARTIALLY_FILLED


def test_fills() -> None:
    working_or_pending = {S.NEW, S.PARTIALLY_FILLED, S.PENDING_CANCEL, S.PENDING_REPLACE}
    assert _from(E.FILL) == working_or_pending
    assert _from(E.PARTIAL_FILL) == working_or_pending
    assert {transition(s, E.FILL) for s in working_or_pending} == {S.FILLED}
    assert transition(S.NEW, E.PARTIAL_FILL) == S.PARTIALLY_FILLED
    assert transition(S.PARTIALLY_FILLED, E.PARTIAL_FILL) == S.PARTIALLY_FILLED
    # fills during a pending request keep it pending until it is answered
    assert transition(S.PENDING_CANCEL, E.PARTIAL_FILL) == S.PENDING_CANCEL
    assert transition(S.PENDING_REPLACE, E.PARTIAL_FILL) == S.PENDING_REPLACE
    # nothing fills before the execution side has acknowledged it
    for s in (S.ACCEPTED, S.PENDING_NEW):
        assert not allowed(s, E.FILL) and not allowed(s, E.PARTIAL_FILL)


def test_replace_requests() -> None:
    assert _from(E.REQUEST_REPLACE) == {S.ACCEPTED, S.NEW, S.PARTIALLY_FILLED}
    for s in _from(E.REQUEST_REPLACE):
        assert transition(s, E.REQUEST_REPLACE) == S.PENDING_REPLACE
    assert _from(E.REPLACE) == {S.PENDING_REPLACE}
    assert transition(S.PENDING_REPLACE, E.REPLACE) == S.REPLACED
    assert _from(E.REPLACE_REJECT) == {S.PENDING_REPLACE}
    assert transition(S.PENDING_REPLACE, E.REPLACE_REJECT) == S.NEW
    assert transition(S.PENDING_REPLACE, E.REPLACE_REJECT, has_fills=True) == S.PARTIALLY_FILLED


def test_acknowledge_expire_reject() -> None:
    assert _from(E.ACKNOWLEDGE) == {S.ACCEPTED, S.PENDING_NEW, S.PENDING_CANCEL, S.PENDING_REPLACE}
    assert {transition(s, E.ACKNOWLEDGE) for s in (S.ACCEPTED, S.PENDING_NEW)} == {S.NEW}
    # an acknowledgement that overtakes a cancel or replace request leaves it pending
    for s in (S.PENDING_CANCEL, S.PENDING_REPLACE):
        assert transition(s, E.ACKNOWLEDGE) == s
    assert _from(E.EXPIRE) == set(OPEN)
    assert {transition(s, E.EXPIRE) for s in OPEN} == {S.EXPIRED}
    assert _from(E.REJECT) == {S.ACCEPTED, S.PENDING_NEW}
    assert {transition(s, E.REJECT) for s in _from(E.REJECT)} == {S.REJECTED}


def test_each_terminal_status_has_its_own_event() -> None:
    into = {target: {e for (s, e), t in TABLE.items() if t == target} for target in TERMINAL}
    assert into == {
        S.FILLED: {E.FILL},
        S.CANCELED: {E.CANCEL},
        S.EXPIRED: {E.EXPIRE},
        S.REPLACED: {E.REPLACE},
        S.REJECTED: {E.REJECT},
    }
