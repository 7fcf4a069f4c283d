"""Account events: every order event of an account, numbered, logged, then published.

Ledger.apply_batch (infra/ledger_batch.py) notes each status change it makes and each
fill, renders each as `payload` (the order as that event left it), and at the end of its
transaction writes them to `account_events` (migration 0004), numbered after the
account's `accounts.event_seq`, which the same statement bumps by their count; the
account row stays locked to the commit, so an account's events are 1, 2, 3 ... with no
holes, in commit order. After the commit the ledger flow
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
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
import psycopg

from schemas.oms import Order
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


_INSERT = (
    "WITH s AS (UPDATE accounts SET event_seq = event_seq + 1 WHERE id = %(a)s "
    "RETURNING event_seq) "
    "INSERT INTO account_events (account_id, seq, event, order_id, at, payload) "
    "SELECT %(a)s, s.event_seq, %(e)s, %(o)s, %(at)s, "
    "jsonb_set(%(p)s::jsonb, '{seq}', to_jsonb(s.event_seq)) FROM s "
    "RETURNING seq, payload::text"
)


def payload(
    order: Order,
    event: str,
    at: datetime,
    fill: dict[str, Any] | None = None,
    position_qty: Decimal | None = None,
) -> dict[str, Any]:
    """The event as logged and streamed; its "seq" is filled in when it is written."""
    out: dict[str, Any] = {"event": event, "seq": 0, "at": _iso(at), "order": render_order(order)}
    if fill is not None:
        out.update(
            {
                "execution_id": str(fill.get("exec_id") or fill["event_id"]),
                "qty": str(Decimal(str(fill["qty"])).quantize(QTY)),
                "price": str(Decimal(str(fill["price"])).quantize(PRICE)),
                "venue": str(fill.get("venue", "")),
                "position_qty": str(position_qty),
            }
        )
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
