"""Account events: every order event of an account, numbered, logged, then published.

Ledger.apply notes each status change it makes (`note`, called by Ledger._move) and
each fill; at the end of its transaction `record` writes them to `account_events`
(migration 0004), each numbered by bumping `accounts.event_seq`, so an account's
events are 1, 2, 3 ... with no holes, in commit order. After the commit the ledger flow
`publish`es them to the Redis channel `account:{account_id}`, where WS /v1/stream
picks them up (api/stream/account.py). PostgreSQL is the truth: a publish that fails
loses nothing, the stream reads the log when it sees a hole or a client reconnects.

The payload, shaped like Alpaca's trade_updates:

    {"event": "fill", "seq": 7, "at": "2026-11-24T15:00:00.000001Z",
     "order": {...the order after the change, as GET /v1/orders/{id} renders it...},
     "execution_id": "...", "qty": "4", "price": "99.5", "venue": "iex",
     "position_qty": "4"}                       # the last five for fills only

Events (from schemas.order_states): acknowledge -> new, partial_fill, fill, cancel ->
canceled, expire -> expired, replace -> replaced (the old order; its replacement gets
`new`), reject -> rejected, cancel_reject -> order_cancel_rejected, replace_reject ->
order_replace_rejected. API-side requests (placing, cancel and replace requests) are
not logged here: their HTTP answer carries the order (README "Account updates").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
import psycopg

from schemas.oms import ORDER_COLUMNS, Order, order_from_row
from schemas.order_states import OrderEvent

log = logging.getLogger("tapeflow.account_events")

CHANNEL_PREFIX = "account"
PRICE, QTY = Decimal("0.0001"), Decimal("0.000001")  # as the ledger stores them

EVENT_NAMES: dict[OrderEvent, str] = {
    OrderEvent.ACKNOWLEDGE: "new",
    OrderEvent.PARTIAL_FILL: "partial_fill",
    OrderEvent.FILL: "fill",
    OrderEvent.CANCEL: "canceled",
    OrderEvent.EXPIRE: "expired",
    OrderEvent.REPLACE: "replaced",
    OrderEvent.REJECT: "rejected",
    OrderEvent.CANCEL_REJECT: "order_cancel_rejected",
    OrderEvent.REPLACE_REJECT: "order_replace_rejected",
    OrderEvent.REQUEST_CANCEL: "pending_cancel",
    OrderEvent.REQUEST_REPLACE: "pending_replace",
}


def channel(account_id: UUID | str) -> str:
    return f"{CHANNEL_PREFIX}:{account_id}"


@dataclass(frozen=True, slots=True)
class AccountEvent:
    account_id: UUID
    seq: int
    payload: bytes  # the JSON object as logged (and streamed under "data")


@dataclass(slots=True)
class _Noted:
    order_id: UUID
    event: str
    fill: dict[str, Any] | None = None
    position_qty: Decimal | None = None  # the position after the fill, when known


# The events of the transaction Ledger.apply is running on this thread (None: not
# inside apply, nothing is noted).
_current = threading.local()


def begin() -> None:
    _current.noted = []


def end() -> list[_Noted]:
    noted: list[_Noted] = getattr(_current, "noted", None) or []
    _current.noted = None
    return noted


def note(
    order_id: UUID,
    event: OrderEvent | str,
    fill: dict[str, Any] | None = None,
    position_qty: Decimal | None = None,
) -> None:
    """Called by the ledger for each status change (and fill) inside `apply`."""
    noted = getattr(_current, "noted", None)
    if noted is None:
        return
    name = EVENT_NAMES.get(event, str(event)) if isinstance(event, OrderEvent) else event
    noted.append(_Noted(order_id, name, fill, position_qty))


_INSERT = (
    "WITH s AS (UPDATE accounts SET event_seq = event_seq + 1 WHERE id = %(a)s "
    "RETURNING event_seq) "
    "INSERT INTO account_events (account_id, seq, event, order_id, at, payload) "
    "SELECT %(a)s, s.event_seq, %(e)s, %(o)s, %(at)s, "
    "jsonb_set(%(p)s::jsonb, '{seq}', to_jsonb(s.event_seq)) FROM s "
    "RETURNING seq, payload::text"
)


def record(conn: psycopg.Connection, noted: Iterable[_Noted], at: datetime) -> list[AccountEvent]:
    """Write the noted events in the caller's transaction, last thing before its commit
    (the account row is locked last, after the orders and positions)."""
    out: list[AccountEvent] = []
    for n in noted:
        row = conn.execute(
            f"SELECT {ORDER_COLUMNS} FROM orders WHERE id = %s", (n.order_id,)
        ).fetchone()
        if row is None:
            continue
        order = order_from_row(row)
        payload: dict[str, Any] = {
            "event": n.event,
            "seq": 0,
            "at": _iso(at),
            "order": render_order(order),
        }
        if n.fill is not None:
            payload.update(_fill_fields(conn, order, n.fill, n.position_qty))
        got = conn.execute(
            _INSERT,
            {
                "a": order.account_id,
                "e": n.event,
                "o": order.id,
                "at": at,
                "p": orjson.dumps(payload).decode(),
            },
        ).fetchone()
        assert got is not None
        out.append(AccountEvent(order.account_id, int(got[0]), got[1].encode()))
    return out


def append(
    conn: psycopg.Connection, account_id: UUID, event: str, at: datetime, payload: dict[str, Any]
) -> AccountEvent:
    """One event that is not an order's (an alert firing, infra/alerts.py) in the same
    log and numbering, in the caller's transaction; `payload["seq"]` is filled in."""
    got = conn.execute(
        _INSERT,
        {
            "a": account_id,
            "e": event,
            "o": None,
            "at": at,
            "p": orjson.dumps({**payload, "seq": 0}).decode(),
        },
    ).fetchone()
    assert got is not None, "no such account"
    return AccountEvent(account_id, int(got[0]), got[1].encode())


def _fill_fields(
    conn: psycopg.Connection, order: Order, fill: dict[str, Any], held: Decimal | None
) -> dict[str, Any]:
    if held is None:
        row = conn.execute(
            "SELECT qty FROM positions WHERE account_id = %s AND symbol = %s",
            (order.account_id, order.symbol),
        ).fetchone()
        held = row[0] if row else Decimal(0)
    return {
        "execution_id": str(fill.get("exec_id") or fill["event_id"]),
        "qty": str(Decimal(str(fill["qty"])).quantize(QTY)),
        "price": str(Decimal(str(fill["price"])).quantize(PRICE)),
        "venue": str(fill.get("venue", "")),
        "position_qty": str(held),
    }


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def render_order(order: Order) -> Any:
    """The order as the REST API renders it (api/routes/orders.py `order_out`)."""
    from api.models import OrderOut

    values = {name: getattr(order, name) for name in OrderOut.model_fields}
    for name, value in values.items():
        if isinstance(value, datetime):
            values[name] = value.astimezone(UTC)
    values["status"] = str(order.status)
    return orjson.loads(OrderOut(**values).model_dump_json())


def publish(client: Any, events: list[AccountEvent]) -> bool:
    """PUBLISH each event to account:{id} (redis-py client); False if Redis failed. The
    log is already committed: a failed publish is caught up by the stream from it."""
    if not events:
        return True
    try:
        pipe = client.pipeline(transaction=False)
        for e in events:
            pipe.publish(channel(e.account_id), e.payload)
        pipe.execute()
        return True
    except Exception as exc:  # never undo or stop the ledger for the live path
        log.warning("publishing %d account events failed: %r", len(events), exc)
        return False


def read(
    conn: psycopg.Connection, account_id: UUID, after: int, limit: int = 500
) -> list[tuple[int, bytes]]:
    """(seq, payload) of the account's events after seq `after`, in order."""
    rows = conn.execute(
        "SELECT seq, payload::text FROM account_events WHERE account_id = %s AND seq > %s "
        "ORDER BY seq LIMIT %s",
        (account_id, after, limit),
    ).fetchall()
    return [(int(s), p.encode()) for s, p in rows]


def head(conn: psycopg.Connection, account_id: UUID) -> int | None:
    row = conn.execute("SELECT event_seq FROM accounts WHERE id = %s", (account_id,)).fetchone()
    return None if row is None else int(row[0])
