"""The ledger of record in PostgreSQL: cash, reservations and orders (DESIGN.md section 3).

Every change to money or to an order is one transaction here:
- placing reserves cash (buys) or shares (sells) with a conditional UPDATE on the
  account or position row, so concurrent orders serialize on that row and can never
  reserve more than exists (the CHECK constraints of migration 0002 back this up);
  the order row and its outbox message are written in the same transaction;
- cancel and replace requests move the order through `schemas.order_states` and
  write their own outbox messages;
- answers from the execution side (`apply`) are recorded by event id first, so a
  redelivered answer changes nothing, and an answer the state machine refuses is
  stored as an anomaly rather than applied.
Fills (executions, positions, lots, cash) arrive the same way, as `fill` answers.
Answers are applied in batches, a few round trips each (infra/ledger_batch.py, with
fills by infra/fills.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import psycopg
from psycopg import errors
from psycopg_pool import ConnectionPool

from infra import account_events
from infra.topics import Topics
from schemas.oms import (
    NEW_ORDER_COLUMNS,
    ORDER_COLUMNS,
    Order,
    encode,
    new_order_values,
    now_ns,
    order_from_row,
    order_wire,
)
from schemas.order_states import (
    OPEN,
    IllegalTransition,
    OrderEvent,
    OrderStatus,
    transition,
)
from schemas.orders import OrderRequest, Placement, Side

OUTBOX_CHANNEL = "tapeflow_outbox"
ZERO = Decimal(0)
# Answers that only end an order: for an order already expired they change nothing.
LATE_ENDINGS = frozenset({"expired", "canceled", "rejected"})


class LedgerError(Exception):
    status = 422
    code = "ledger_error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class InsufficientBuyingPower(LedgerError):
    status, code = 403, "insufficient_buying_power"


class InsufficientQty(LedgerError):
    status, code = 403, "insufficient_qty"


class DuplicateClientOrderId(LedgerError):
    status, code = 422, "duplicate_client_order_id"


class OrderNotFound(LedgerError):
    status, code = 404, "order_not_found"


class NotCancelable(LedgerError):
    status, code = 422, "order_not_cancelable"


class NotReplaceable(LedgerError):
    status, code = 422, "order_not_replaceable"


class IdempotencyKeyReused(LedgerError):
    status, code = 422, "idempotency_key_reused"


class AccountNotFound(LedgerError):
    status, code = 404, "account_not_found"


@dataclass(frozen=True, slots=True)
class Balance:
    account_id: UUID
    cash: Decimal
    reserved_cash: Decimal
    buying_power: Decimal
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Replay:
    """A stored answer to a request made before with the same Idempotency-Key."""

    status_code: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Applied:
    event_id: str
    outcome: str  # applied | duplicate | anomaly
    reason: str = ""
    # The account events the change wrote (infra/account_events.py), committed: the
    # caller publishes them.
    events: tuple[account_events.AccountEvent, ...] = ()


def request_hash(method: str, path: str, body: bytes) -> bytes:
    return hashlib.sha256(b"%s %s\n%s" % (method.encode(), path.encode(), body)).digest()


_BALANCE = "id, cash, reserved_cash, buying_power, updated_at"


def _order_of(row: tuple | None) -> Order | None:
    return order_from_row(row) if row is not None else None


class Ledger:
    """Ledger operations for every account; API routes scope them by the caller's account."""

    def __init__(self, pool: ConnectionPool, topics: Topics) -> None:
        self.pool = pool
        self.topics = topics

    # -- cash ---------------------------------------------------------------------------

    def balance(self, account_id: UUID) -> Balance:
        with self.pool.connection() as conn:
            row = conn.execute(
                f"SELECT {_BALANCE} FROM accounts WHERE id = %s", (account_id,)
            ).fetchone()
        if row is None:
            raise AccountNotFound(f"no account {account_id}")
        return Balance(*row)

    def deposit(self, account_id: UUID, amount: Decimal, note: str = "") -> Balance:
        if not amount.is_finite() or amount <= 0 or amount != amount.quantize(Decimal("0.01")):
            raise LedgerError(
                "a deposit is a positive amount in dollars and cents", "invalid_amount"
            )
        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute(
                f"UPDATE accounts SET cash = cash + %s, updated_at = now() WHERE id = %s "
                f"RETURNING {_BALANCE}",
                (amount, account_id),
            ).fetchone()
            if row is None:
                raise AccountNotFound(f"no account {account_id}")
            conn.execute(
                "INSERT INTO cash_transfers (account_id, amount, kind, note) "
                "VALUES (%s, %s, 'deposit', %s)",
                (account_id, amount, note),
            )
        return Balance(*row)

    # -- reads --------------------------------------------------------------------------

    def get(self, account_id: UUID, order_id: UUID) -> Order:
        with self.pool.connection() as conn:
            row = conn.execute(
                f"SELECT {ORDER_COLUMNS} FROM orders WHERE id = %s AND account_id = %s",
                (order_id, account_id),
            ).fetchone()
        order = _order_of(row)
        if order is None:
            raise OrderNotFound(f"no order {order_id}")
        return order

    def by_client_order_id(self, account_id: UUID, client_order_id: str) -> Order:
        with self.pool.connection() as conn:
            row = conn.execute(
                f"SELECT {ORDER_COLUMNS} FROM orders "
                "WHERE account_id = %s AND client_order_id = %s",
                (account_id, client_order_id),
            ).fetchone()
        order = _order_of(row)
        if order is None:
            raise OrderNotFound(f"no order with client_order_id {client_order_id!r}")
        return order

    def list(
        self,
        account_id: UUID,
        *,
        status: str = "open",
        symbols: list[str] | None = None,
        after: datetime | None = None,
        until: datetime | None = None,
        direction: str = "desc",
        limit: int = 50,
        cursor: tuple[datetime, UUID] | None = None,
    ) -> list[Order]:
        """Orders of the account by created_at (then id), `limit` of them after `cursor`."""
        where = ["account_id = %s"]
        params: list[Any] = [account_id]
        open_list = [s.value for s in OPEN]
        if status == "open":
            where.append("status = ANY(%s)")
            params.append(open_list)
        elif status == "closed":
            where.append("NOT (status = ANY(%s))")
            params.append(open_list)
        if symbols:
            where.append("symbol = ANY(%s)")
            params.append(symbols)
        if after is not None:
            where.append("created_at > %s")
            params.append(after)
        if until is not None:
            where.append("created_at < %s")
            params.append(until)
        op, order = ("<", "DESC") if direction == "desc" else (">", "ASC")
        if cursor is not None:
            where.append(f"(created_at, id) {op} (%s, %s)")
            params += list(cursor)
        params.append(limit)
        sql = (
            f"SELECT {ORDER_COLUMNS} FROM orders WHERE {' AND '.join(where)} "
            f"ORDER BY created_at {order}, id {order} LIMIT %s"
        )
        with self.pool.connection() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [o for o in map(_order_of, rows) if o is not None]

    def replay(self, account_id: UUID, key: str, digest: bytes) -> Replay | None:
        """The stored answer for this Idempotency-Key; IdempotencyKeyReused if the
        request differs from the one the key was first used with."""
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT request_hash, status_code, body FROM idempotency_keys "
                "WHERE account_id = %s AND key = %s",
                (account_id, key),
            ).fetchone()
        if row is None:
            return None
        if bytes(row[0]) != digest:
            raise IdempotencyKeyReused(f"Idempotency-Key {key!r} was used with a different request")
        return Replay(row[1], bytes(row[2]))

    # -- placing ------------------------------------------------------------------------

    def place(
        self,
        account_id: UUID,
        request: OrderRequest,
        placement: Placement,
        client_order_id: str | None = None,
        *,
        idempotency: tuple[str, bytes] | None = None,
        render: Callable[[Order], bytes] | None = None,
    ) -> Order | Replay:
        """Reserve, record and queue the order for oms.orders, in one transaction.

        With `idempotency` (key, request hash) the rendered answer is stored with the
        order; a concurrent request with the same key waits for this one, then gets
        its stored answer (Replay). A batch of one of infra/order_batch.py (the
        place_orders_bulk function of migration 0009), which the HTTP route batches.
        """
        from infra.order_batch import NewOrder, place_batch, settle

        item = NewOrder(account_id, request, placement, client_order_id, idempotency, render)
        with self.pool.connection() as conn:
            outcome = place_batch(conn, [item], self.topics.orders)[0]
        return settle(self, item, outcome)

    def _reserve(
        self,
        conn: psycopg.Connection,
        account_id: UUID,
        side: str,
        symbol: str,
        placement: Placement,
        credit: tuple[Decimal, Decimal] = (ZERO, ZERO),
    ) -> None:
        """Reserve the placement's cash or shares beyond `credit` (what a replaced order
        already holds), or raise 403. The conditional UPDATE locks the row: concurrent
        reservations against one account or position queue behind each other."""
        if side == Side.BUY:
            extra = max(ZERO, placement.reserve_cash - credit[0])
            row = conn.execute(
                "UPDATE accounts SET reserved_cash = reserved_cash + %s, updated_at = now() "
                "WHERE id = %s AND cash - reserved_cash >= %s RETURNING buying_power",
                (extra, account_id, extra),
            ).fetchone()
            if row is None:
                bp = conn.execute(
                    "SELECT buying_power FROM accounts WHERE id = %s", (account_id,)
                ).fetchone()
                have = bp[0] if bp else ZERO
                raise InsufficientBuyingPower(
                    f"this order needs {extra} of buying power; the account has {have}"
                )
            return
        extra = max(ZERO, placement.reserve_qty - credit[1])
        row = conn.execute(
            "UPDATE positions SET reserved_qty = reserved_qty + %s, updated_at = now() "
            "WHERE account_id = %s AND symbol = %s AND qty - reserved_qty >= %s "
            "RETURNING qty - reserved_qty",
            (extra, account_id, symbol, extra),
        ).fetchone()
        if row is None:
            held = conn.execute(
                "SELECT qty - reserved_qty FROM positions WHERE account_id = %s AND symbol = %s",
                (account_id, symbol),
            ).fetchone()
            have = held[0] if held else ZERO
            raise InsufficientQty(
                f"this sell needs {extra} shares of {symbol}; {have} are available "
                "(no short selling)"
            )

    def _insert_order(
        self,
        conn: psycopg.Connection,
        order_id: UUID,
        account_id: UUID,
        coid: str,
        r: OrderRequest,
        p: Placement,
        *,
        replaces: UUID | None = None,
        reserved: tuple[Decimal, Decimal] | None = None,
    ) -> Order:
        cash, qty = reserved if reserved is not None else (p.reserve_cash, p.reserve_qty)
        row = conn.execute(
            f"INSERT INTO orders ({NEW_ORDER_COLUMNS}, replaces) VALUES "
            f"({', '.join(['%s'] * 19)}) RETURNING {ORDER_COLUMNS}",
            (*new_order_values(order_id, account_id, coid, r, p, cash, qty), replaces),
        ).fetchone()
        order = _order_of(row)
        assert order is not None
        return order

    def _queue(self, conn: psycopg.Connection, kind: str, symbol: str, body: dict) -> None:
        """An outbox row for oms.orders; its event id is filled in by the relay's id."""
        payload = encode({"kind": kind, "at": now_ns(), **body})
        conn.execute(
            "INSERT INTO outbox (topic, key, payload) VALUES (%s, %s, %s)",
            (self.topics.orders, symbol, payload),
        )
        conn.execute("SELECT pg_notify(%s, '')", (OUTBOX_CHANNEL,))

    # -- cancel and replace requests ----------------------------------------------------

    def _locked(self, conn: psycopg.Connection, account_id: UUID, order_id: UUID) -> Order:
        row = conn.execute(
            f"SELECT {ORDER_COLUMNS} FROM orders WHERE id = %s AND account_id = %s "
            "FOR NO KEY UPDATE",
            (order_id, account_id),
        ).fetchone()
        order = _order_of(row)
        if order is None:
            raise OrderNotFound(f"no order {order_id}")
        return order

    def request_cancel(self, account_id: UUID, order_id: UUID) -> Order:
        with self.pool.connection() as conn, conn.transaction():
            return self._request_cancel(conn, self._locked(conn, account_id, order_id))

    def _request_cancel(self, conn: psycopg.Connection, order: Order) -> Order:
        try:
            status = transition(order.status, OrderEvent.REQUEST_CANCEL)
        except IllegalTransition:
            raise NotCancelable(
                f"order {order.id} is {order.status} and cannot be canceled"
            ) from None
        if self._replace_pending(conn, order):
            raise NotCancelable(
                f"order {order.id} replaces {order.replaces}; the replace is not confirmed yet"
            )
        row = conn.execute(
            f"UPDATE orders SET status = %s, updated_at = now(), version = version + 1 "
            f"WHERE id = %s RETURNING {ORDER_COLUMNS}",
            (status.value, order.id),
        ).fetchone()
        self._queue(
            conn,
            "cancel",
            order.symbol,
            {"order_id": order.id, "account_id": order.account_id, "symbol": order.symbol},
        )
        updated = _order_of(row)
        assert updated is not None
        return updated

    def _replace_pending(self, conn: psycopg.Connection, order: Order) -> bool:
        """Whether `order` replaces an order still pending_replace: until the execution
        side answers, the pair is one request in flight and takes no other (a cancel or
        replace of the new order would make the confirmation inapplicable)."""
        if order.replaces is None:
            return False
        row = conn.execute("SELECT status FROM orders WHERE id = %s", (order.replaces,)).fetchone()
        return row is not None and row[0] == OrderStatus.PENDING_REPLACE

    def cancel_all(self, account_id: UUID) -> list[tuple[UUID, Order | LedgerError]]:
        """Request a cancel for every open order; one answer per order, in one transaction."""
        out: list[tuple[UUID, Order | LedgerError]] = []
        with self.pool.connection() as conn, conn.transaction():
            # Locked in id order, as the ledger flow's batches lock orders: by age, each
            # could hold an order the other waits for (a deadlock). Answered by age.
            rows = conn.execute(
                f"SELECT {ORDER_COLUMNS} FROM orders WHERE account_id = %s "
                "AND status = ANY(%s) ORDER BY id FOR NO KEY UPDATE",
                (account_id, [s.value for s in OPEN]),
            ).fetchall()
            for order in sorted(map(order_from_row, rows), key=lambda o: (o.created_at, o.id)):
                if order.status in (OrderStatus.PENDING_CANCEL, OrderStatus.PENDING_REPLACE):
                    continue  # already being changed: nothing new to ask
                if self._replace_pending(conn, order):
                    continue  # its replace is the request in flight
                try:
                    out.append((order.id, self._request_cancel(conn, order)))
                except NotCancelable as exc:
                    out.append((order.id, exc))
        return out

    def request_replace(
        self,
        account_id: UUID,
        order_id: UUID,
        build: Callable[[Order], tuple[OrderRequest, Placement, str | None]],
    ) -> Order:
        """Replace an order: `build(old)` validates the changed terms (the caller's rules)
        and returns the new request, its placement and client_order_id. The new order
        reserves only what the old one does not already hold; the old one's reservation
        moves to it when the execution side confirms (see `apply`)."""
        new_id = uuid4()
        try:
            with self.pool.connection() as conn, conn.transaction():
                old = self._locked(conn, account_id, order_id)
                try:
                    status = transition(old.status, OrderEvent.REQUEST_REPLACE)
                except IllegalTransition:
                    raise NotReplaceable(
                        f"order {old.id} is {old.status} and cannot be replaced"
                    ) from None
                if self._replace_pending(conn, old):
                    raise NotReplaceable(
                        f"order {old.id} replaces {old.replaces}; the replace is not confirmed yet"
                    )
                request, placement, coid = build(old)
                if (request.symbol, request.side) != (old.symbol, old.side):
                    # the old order's reservation is the credit: same position, same side
                    raise NotReplaceable("a replace keeps the order's symbol and side")
                credit = (old.reserved_cash, old.reserved_qty)
                self._reserve(conn, account_id, request.side, request.symbol, placement, credit)
                extra = (
                    max(ZERO, placement.reserve_cash - credit[0]),
                    max(ZERO, placement.reserve_qty - credit[1]),
                )
                new = self._insert_order(
                    conn,
                    new_id,
                    account_id,
                    coid or str(new_id),
                    request,
                    placement,
                    replaces=old.id,
                    reserved=extra,
                )
                conn.execute(
                    "UPDATE orders SET status = %s, replaced_by = %s, updated_at = now(), "
                    "version = version + 1 WHERE id = %s",
                    (status.value, new.id, old.id),
                )
                self._queue(
                    conn,
                    "replace",
                    old.symbol,
                    {
                        "order_id": old.id,
                        "account_id": account_id,
                        "symbol": old.symbol,
                        "expected_filled_qty": old.filled_qty,
                        "order": order_wire(new),
                    },
                )
                return new
        except errors.UniqueViolation as exc:
            if exc.diag.constraint_name == "orders_client_order_id_key":
                raise DuplicateClientOrderId(
                    "client_order_id is already used by an order of this account"
                ) from None
            raise

    # -- answers from the execution side ------------------------------------------------

    def apply(self, event: dict[str, Any]) -> Applied:
        """Apply one oms.executions answer or fill exactly once, by event id."""
        return self.apply_batch([event])[0]

    def apply_batch(self, events: list[dict[str, Any]]) -> list[Applied]:
        """Apply events in order, in ONE transaction (one commit, one WAL flush, for the
        whole batch) and a few round trips (infra/ledger_batch.py): an anomaly or a
        refused fill is recorded without undoing the others, and leaves nothing else.
        Nothing is visible before the commit; a failure (deadlock, database down) undoes
        the whole batch, which is safe to apply again.

        The rows are locked as order placement locks them, so the two never deadlock:
        its orders and open tax lots first (placement touches neither), then, in the
        write round trip with the commit, its accounts in id order and then its
        positions (placement locks accounts, for buys, before positions, for sells).
        Holding the accounts only for that round trip matters: placement waits on
        them, and when the ledger locked them first it held them while it read and
        computed (at 1,000 orders/s half its time went waiting on them, and placement's
        on it)."""
        from infra.ledger_batch import apply_events

        with self.pool.connection() as conn:
            # The pipeline is outermost so the COMMIT joins the writes' round trip.
            with conn.pipeline(), conn.transaction():
                results = apply_events(conn, events)
            return results()
