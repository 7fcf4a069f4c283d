"""The order record and the messages between the ledger and the execution side.

oms.orders (keyed by symbol, written only by the outbox relay), one JSON object each:
    {"event_id": "o:<outbox id>", "kind": "new",     "at": ns, "order": {...}}
    {"event_id": ..., "kind": "cancel",  "at": ns, "order_id", "account_id", "symbol"}
    {"event_id": ..., "kind": "replace", "at": ns, "order_id", "account_id", "symbol",
     "expected_filled_qty": "0", "order": {... the replacing order ...}}
The execution side must apply a replace only if the old order's filled quantity is
still `expected_filled_qty` (what the ledger knew when it moved the reservation);
otherwise it answers replace_rejected and the old order keeps working.

oms.executions (keyed by account id), answers and fills from the execution side:
    {"event_id": "<deterministic>", "kind": K, "at": ns, "order_id", "account_id",
     "symbol", ...}
with K one of acknowledged, rejected (+ "reason"), canceled (+ "reason"),
cancel_rejected, replaced (+ "replaced_by"), replace_rejected (+ "replaced_by",
"reason"), expired, fill (+ "exec_id", "qty", "price", "venue", "route"). Every
consumer is idempotent by event_id. Decimals travel as strings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from uuid import UUID

import orjson

from schemas.order_states import OrderStatus
from schemas.orders import CASH_PLACES, PRICE_PLACES, QTY_PLACES, OrderRequest, Placement

ORDER_KINDS = ("new", "cancel", "replace")
EXECUTION_KINDS = (
    "acknowledged",
    "rejected",
    "canceled",
    "cancel_rejected",
    "replaced",
    "replace_rejected",
    "expired",
    "fill",
)


@dataclass(frozen=True, slots=True)
class Order:
    """One row of `orders`, column for column (infra/ledger.py selects ORDER_COLUMNS)."""

    id: UUID
    account_id: UUID
    client_order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    qty: Decimal | None
    notional: Decimal | None
    filled_qty: Decimal
    filled_avg_price: Decimal | None
    limit_price: Decimal | None
    stop_price: Decimal | None
    trail_price: Decimal | None
    trail_percent: Decimal | None
    hwm: Decimal | None
    extended_hours: bool
    status: OrderStatus
    reject_reason: str | None
    reserve_price: Decimal | None
    reserved_cash: Decimal
    reserved_qty: Decimal
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None
    filled_at: datetime | None
    canceled_at: datetime | None
    expired_at: datetime | None
    replaced_at: datetime | None
    failed_at: datetime | None
    replaced_by: UUID | None
    replaces: UUID | None
    version: int


ORDER_FIELDS = [f.name for f in fields(Order)]
ORDER_COLUMNS = ", ".join(ORDER_FIELDS)
_STATUS = ORDER_FIELDS.index("status")


# A new order's row as placement writes it (the rest take their column defaults).
NEW_ORDER_COLUMNS = (
    "id, account_id, client_order_id, symbol, side, type, time_in_force, qty, notional, "
    "limit_price, stop_price, trail_price, trail_percent, extended_hours, status, "
    "reserve_price, reserved_cash, reserved_qty"
)


def new_order_values(
    order_id: UUID,
    account_id: UUID,
    client_order_id: str,
    r: OrderRequest,
    p: Placement,
    reserved_cash: Decimal,
    reserved_qty: Decimal,
) -> tuple[Any, ...]:
    """The values of NEW_ORDER_COLUMNS for a placed request."""
    return (
        order_id,
        account_id,
        client_order_id,
        r.symbol,
        r.side.value,
        r.type.value,
        r.time_in_force.value,
        r.qty,
        r.notional,
        r.limit_price,
        r.stop_price,
        r.trail_price,
        r.trail_percent,
        r.extended_hours,
        p.status.value,
        p.reserve_price,
        reserved_cash,
        reserved_qty,
    )


def _stored(value: Decimal | None, places: Decimal) -> Decimal | None:
    """`value` as a numeric column of that scale stores it (half away from zero)."""
    return None if value is None else value.quantize(places, ROUND_HALF_UP)


_NEW_FIELDS = [c.strip() for c in NEW_ORDER_COLUMNS.split(",")]
# The numeric columns' scales (migration 0002); the others store what they are given.
_SCALES = {
    "qty": QTY_PLACES,
    "notional": CASH_PLACES,
    "filled_qty": QTY_PLACES,
    "limit_price": PRICE_PLACES,
    "stop_price": PRICE_PLACES,
    "trail_price": PRICE_PLACES,
    "trail_percent": PRICE_PLACES,
    "reserve_price": PRICE_PLACES,
    "reserved_cash": CASH_PLACES,
    "reserved_qty": QTY_PLACES,
}
_DEFAULTS = {"filled_qty": Decimal(0), "version": 1}


def new_order_row(values: tuple[Any, ...], at: datetime) -> tuple[Any, ...]:
    """The whole row (ORDER_COLUMNS, status as text) that inserting `values`
    (new_order_values) with created_at = updated_at = `at` makes, so the caller knows it
    without reading it back."""
    given = dict(zip(_NEW_FIELDS, values, strict=True))
    row = {**_DEFAULTS, **given, "created_at": at, "updated_at": at}
    return tuple(
        _stored(row.get(name), _SCALES[name]) if name in _SCALES else row.get(name)
        for name in ORDER_FIELDS
    )


def order_from_row(row: tuple) -> Order:
    """An Order from a row selected as ORDER_COLUMNS (the status comes back as text)."""
    values = list(row)
    values[_STATUS] = OrderStatus(values[_STATUS])
    return Order(*values)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode(message: dict[str, Any]) -> bytes:
    """orjson with Decimals as strings; UUIDs and datetimes (RFC 3339, UTC) natively."""
    return orjson.dumps(message, default=_default)


def decode(raw: bytes) -> dict[str, Any]:
    return orjson.loads(raw)


def order_wire(order: Order) -> dict[str, Any]:
    """The order as the execution side needs it (every field; Decimals kept)."""
    return asdict(order)


def ns_of(at: datetime) -> int:
    """`at` as the messages' "at": integer ns at microsecond precision (PostgreSQL's)."""
    return int(at.timestamp() * 1_000_000) * 1000


def now_ns() -> int:
    return ns_of(datetime.now(UTC))


def order_from_wire(d: dict[str, Any]) -> Order:
    """Inverse of encode(order_wire(order)) after decode: strings back to types."""
    out: dict[str, Any] = {}
    for f in fields(Order):
        v = d.get(f.name)
        if v is None:
            out[f.name] = None
        elif f.name in ("id", "account_id", "replaced_by", "replaces"):
            out[f.name] = UUID(v)
        elif f.name.endswith("_at"):
            out[f.name] = datetime.fromisoformat(v)
        elif f.name == "status":
            out[f.name] = OrderStatus(v)
        elif f.name in ("extended_hours", "version", "client_order_id", "symbol") or f.name in (
            "side",
            "type",
            "time_in_force",
            "reject_reason",
        ):
            out[f.name] = v
        else:
            out[f.name] = Decimal(v)
    return Order(**out)
