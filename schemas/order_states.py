"""The order state machine: one table of (status, event) -> status, used everywhere.

The API (placement, cancel and replace requests), the execution flow and the ledger
flow change an order's status only through `transition`, so an illegal change cannot
happen anywhere: an event with no entry for the current status raises
`IllegalTransition`. Status names follow Alpaca's order object.

    accepted         committed in the ledger, held until its session opens
    pending_new      committed in the ledger and sent to the execution side
    new              the execution side has it (resting, waiting for a trigger, or working)
    partially_filled
    filled           terminal
    pending_cancel   cancel requested; the execution side has not answered yet
    pending_replace  replace requested; the execution side has not answered yet
    canceled         terminal (also an IOC/FOK remainder, a market order's collar remainder)
    expired          terminal (day orders at the close, opg/cls outside their auction)
    replaced         terminal: a newer order took its place (replaced_by)
    rejected         terminal: the execution side refused it (reject_reason)
"""

from __future__ import annotations

from enum import StrEnum


class OrderStatus(StrEnum):
    ACCEPTED = "accepted"
    PENDING_NEW = "pending_new"
    NEW = "new"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    PENDING_CANCEL = "pending_cancel"
    PENDING_REPLACE = "pending_replace"
    CANCELED = "canceled"
    EXPIRED = "expired"
    REPLACED = "replaced"
    REJECTED = "rejected"


class OrderEvent(StrEnum):
    """What can happen to an order. Requests come from the API; the rest from execution."""

    ACKNOWLEDGE = "acknowledge"  # the execution side took the order: working / resting
    PARTIAL_FILL = "partial_fill"  # a fill that leaves quantity open
    FILL = "fill"  # the fill that completes the order
    REQUEST_CANCEL = "request_cancel"
    CANCEL = "cancel"  # confirmed by the execution side (also unprompted: IOC remainder)
    CANCEL_REJECT = "cancel_reject"  # too late: the order filled or is gone
    REQUEST_REPLACE = "request_replace"
    REPLACE = "replace"  # confirmed: the replacing order now works instead
    REPLACE_REJECT = "replace_reject"
    EXPIRE = "expire"
    REJECT = "reject"


S, E = OrderStatus, OrderEvent

TERMINAL: frozenset[OrderStatus] = frozenset(
    {S.FILLED, S.CANCELED, S.EXPIRED, S.REPLACED, S.REJECTED}
)
# Open orders hold a reservation; reserved buying power equals the sum over these.
OPEN: frozenset[OrderStatus] = frozenset(set(OrderStatus) - TERMINAL)
# Statuses a pending request returns to when the execution side refuses it: decided by
# whether anything has filled, so the table stays a plain mapping.
RESTORE = "restore"

_WORKING = (S.NEW, S.PARTIALLY_FILLED)
_PENDING_REQUEST = (S.PENDING_CANCEL, S.PENDING_REPLACE)

TABLE: dict[tuple[OrderStatus, OrderEvent], OrderStatus | str] = {
    (S.ACCEPTED, E.ACKNOWLEDGE): S.NEW,
    (S.PENDING_NEW, E.ACKNOWLEDGE): S.NEW,
    # The execution side took the order before it saw a cancel or replace requested in
    # the meantime (a held order reaching the open, or a cancel right after placing):
    # the request is still in flight, so the status stays pending until it is answered.
    **{(s, E.ACKNOWLEDGE): s for s in _PENDING_REQUEST},
    # Fills: a working order, or one whose cancel/replace request is still in flight
    # (the request may lose the race; the status stays pending until it is answered).
    **{(s, E.PARTIAL_FILL): S.PARTIALLY_FILLED for s in _WORKING},
    **{(s, E.PARTIAL_FILL): s for s in _PENDING_REQUEST},
    **{(s, E.FILL): S.FILLED for s in (*_WORKING, *_PENDING_REQUEST)},
    # Cancel: requested for anything open and not already being changed.
    **{(s, E.REQUEST_CANCEL): S.PENDING_CANCEL for s in (S.ACCEPTED, S.PENDING_NEW, *_WORKING)},
    # Confirmed cancels, prompted or not (IOC remainder, cancel-all at the venue).
    **{(s, E.CANCEL): S.CANCELED for s in (S.ACCEPTED, S.PENDING_NEW, *_WORKING, S.PENDING_CANCEL)},
    (S.PENDING_CANCEL, E.CANCEL_REJECT): RESTORE,
    # Replace: only an order the execution side already works can be replaced.
    **{(s, E.REQUEST_REPLACE): S.PENDING_REPLACE for s in (S.ACCEPTED, *_WORKING)},
    (S.PENDING_REPLACE, E.REPLACE): S.REPLACED,
    (S.PENDING_REPLACE, E.REPLACE_REJECT): RESTORE,
    # Expiry at the close (day), after the auction (opg/cls): whatever is still open.
    **{(s, E.EXPIRE): S.EXPIRED for s in OPEN},
    (S.ACCEPTED, E.REJECT): S.REJECTED,
    (S.PENDING_NEW, E.REJECT): S.REJECTED,
}


class IllegalTransition(Exception):
    def __init__(self, status: OrderStatus, event: OrderEvent) -> None:
        super().__init__(f"an order that is {status} cannot take '{event}'")
        self.status, self.event = status, event


def transition(status: OrderStatus, event: OrderEvent, *, has_fills: bool = False) -> OrderStatus:
    """The status after `event`; IllegalTransition when the table has no entry.

    has_fills decides where a refused cancel or replace request returns to.
    """
    target = TABLE.get((status, event))
    if target is None:
        raise IllegalTransition(status, event)
    if target == RESTORE:
        return S.PARTIALLY_FILLED if has_fills else S.NEW
    return OrderStatus(target)


def allowed(status: OrderStatus, event: OrderEvent) -> bool:
    return (status, event) in TABLE
