"""New orders in batches: one statement, one transaction and one commit for many orders.

The order path's cost was per order: five or six statements, a commit (WAL flush) and a
NOTIFY, whose commit PostgreSQL serializes. Here the orders of concurrent requests share
one transaction (group commit), and it is one statement in one round trip:
`place_orders_bulk(...)` (migration 0009) inserts the orders and their outbox rows with
one statement each, then locks and reserves against their accounts and positions with
one statement each, when no order has an Idempotency-Key and every account's and
position's total fits (so every order fits in arrival order); otherwise it undoes that
and calls `place_orders(...)` (migrations 0003, 0008), which inserts, reserves and keys
every order of the batch, each on its own: a refusal (duplicate client_order_id, not
enough buying power or shares, an Idempotency-Key a concurrent request holds) leaves the
others alone. For the orders it accepts it also writes their outbox rows and the answers
stored with their Idempotency-Keys, and NOTIFYs the relay. So the caller builds every
accepted order's row, outbox payload and answer before the call, from the values it
sends (schemas.oms.new_order_row, the timestamps its own): the account and position
rows it reserves against, which the ledger flow writes too, are held only while the
function runs and commits, never across a round trip or this busy process's Python.
The ledger flow takes them the same way: only in its last round trip, which carries its
commit (infra/ledger_batch.py), after accounts-first left each side waiting on the other.

Every guarantee of Ledger.place is kept: an order is answered only after the commit;
reservations are the same conditional UPDATEs on the account or position row; the
outbox row is in the order's transaction. Orders are sorted (buys, then sells, each by
account) so that concurrent batches and the ledger lock rows in one order; a deadlock
(possible only with the odd client_order_id or Idempotency-Key shared across a buy and
a sell) retries the batch, and any other database error places the batch's orders one
by one, so an order that breaks a constraint fails alone.

Ledger.place is a batch of one (sync). The HTTP route goes through `OrderBatcher`: the
requests that arrive while a batch is in flight form the next one; `SLOTS` batches
(connections) per process and event loop may be in flight at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import psycopg
from psycopg import errors

from infra.ledger import (
    OUTBOX_CHANNEL,
    DuplicateClientOrderId,
    InsufficientBuyingPower,
    InsufficientQty,
    Ledger,
    LedgerError,
    Replay,
)
from schemas.oms import (
    ORDER_FIELDS,
    Order,
    encode,
    new_order_row,
    new_order_values,
    ns_of,
    order_from_row,
)
from schemas.orders import OrderRequest, Placement

MAX_BATCH = 256
SLOTS = 2  # batches in flight per process (each on its own connection)
DEADLOCK_RETRIES = 5

PLACE_ARGS = 25  # migrations 0008 and 0009: 22 arrays, the instant, topic and channel
PLACE_SQL = (
    "SELECT n, code, available FROM place_orders_bulk(" + ", ".join(["%s"] * PLACE_ARGS) + ")"
)


@dataclass(slots=True)
class NewOrder:
    account_id: UUID
    request: OrderRequest
    placement: Placement
    client_order_id: str | None = None
    idempotency: tuple[str, bytes] | None = None  # (key, request hash)
    render: Callable[[Order], bytes] | None = None  # the answer stored with the key
    order_id: UUID = field(default_factory=uuid4)

    @property
    def coid(self) -> str:
        return self.client_order_id or str(self.order_id)


class Contended:
    """The order's Idempotency-Key (or client_order_id, with a key) was taken by a
    concurrent request: after the commit, its stored answer is ours."""


CONTENDED = Contended()
Outcome = Order | LedgerError | Contended | Exception


def _prepare(items: list[NewOrder], topic: str) -> tuple[tuple[Any, ...], list[Order]]:
    """The call's parameters, and the order each item becomes if it is accepted."""
    at = datetime.now(UTC)
    at_ns = ns_of(at)
    rows: list[tuple[Any, ...]] = []
    orders: list[Order] = []
    for it in items:
        r, p = it.request, it.placement
        key, digest = it.idempotency if it.idempotency is not None else (None, None)
        values = new_order_values(
            it.order_id,
            it.account_id,
            it.coid,
            r,
            p,
            max(Decimal(0), p.reserve_cash),
            max(Decimal(0), p.reserve_qty),
        )
        row = new_order_row(values, at)
        order = order_from_row(row)
        orders.append(order)
        # order_wire(order) is dataclasses.asdict, which deep-copies every value (a fifth
        # of the API's CPU at load); the row's values are immutable, a shallow dict is it.
        wire = dict(zip(ORDER_FIELDS, row, strict=True))
        payload = encode({"kind": "new", "at": at_ns, "order": wire})
        body = it.render(order) if it.idempotency is not None and it.render else b""
        rows.append((*values, key, digest, body, payload))
    cols = [list(col) for col in zip(*rows, strict=True)]  # one array per argument
    return (*cols, at, topic, OUTBOX_CHANNEL), orders


def _refusal(it: NewOrder, code: str, available: Decimal | None) -> Outcome:
    r, p = it.request, it.placement
    if code == "duplicate_client_order_id":
        if it.idempotency is not None:
            return CONTENDED  # a concurrent retry with the same key may have it: replay
        return DuplicateClientOrderId(
            f"client_order_id {it.coid!r} is already used by an order of this account"
        )
    if code == "insufficient_buying_power":
        return InsufficientBuyingPower(
            f"this order needs {max(Decimal(0), p.reserve_cash)} of buying power; "
            f"the account has {available}"
        )
    if code == "insufficient_qty":
        return InsufficientQty(
            f"this sell needs {max(Decimal(0), p.reserve_qty)} shares of {r.symbol}; "
            f"{available} are available (no short selling)"
        )
    if code == "idempotency_conflict":
        return CONTENDED
    return LedgerError(f"unknown placement result {code!r}")


def _sorted(items: list[NewOrder]) -> list[NewOrder]:
    """Buys (account rows) before sells (position rows), each in key order: the order the
    ledger flow locks them in (accounts, then positions), so the two cannot deadlock."""
    return sorted(
        items, key=lambda it: (it.request.side == "sell", it.account_id, it.request.symbol)
    )


def _outcomes(items: list[NewOrder], orders: list[Order], codes: list[tuple]) -> list[Outcome]:
    return [
        order if code == "ok" else _refusal(it, code, available)
        for it, order, (_, code, available) in zip(items, orders, codes, strict=True)
    ]


# -- sync (Ledger.place) ---------------------------------------------------------------


def _place_sync(conn: psycopg.Connection, items: list[NewOrder], topic: str) -> list[Outcome]:
    params, orders = _prepare(items, topic)
    return _outcomes(items, orders, conn.execute(PLACE_SQL, params).fetchall())


def place_batch(conn: psycopg.Connection, items: list[NewOrder], topic: str) -> list[Outcome]:
    """Place `items` in one transaction on `conn` (autocommit mode, no transaction open);
    one outcome per item, in the same order."""
    ordered = _sorted(items)
    for attempt in range(DEADLOCK_RETRIES):
        try:
            done = _place_sync(conn, ordered, topic)
            break
        except errors.DeadlockDetected:
            if attempt == DEADLOCK_RETRIES - 1:
                raise
        except psycopg.Error:
            if len(items) == 1 or conn.broken:
                raise
            return [_one_sync(conn, it, topic) for it in items]
    by_item = {id(it): out for it, out in zip(ordered, done, strict=True)}
    return [by_item[id(it)] for it in items]


def _one_sync(conn: psycopg.Connection, item: NewOrder, topic: str) -> Outcome:
    try:
        return place_batch(conn, [item], topic)[0]
    except psycopg.Error as exc:
        return exc


def settle(ledger: Ledger, item: NewOrder, outcome: Outcome) -> Order | Replay:
    """The order, or the stored answer of a concurrent request with the same key;
    refusals and errors raise."""
    if isinstance(outcome, Order):
        return outcome
    if isinstance(outcome, Contended):
        assert item.idempotency is not None
        stored = ledger.replay(item.account_id, *item.idempotency)
        if stored is not None:
            return stored
        raise DuplicateClientOrderId(
            f"client_order_id {item.coid!r} is already used by an order of this account"
        )
    raise outcome


# -- async (the HTTP route) ------------------------------------------------------------


async def _place_async(
    conn: psycopg.AsyncConnection, items: list[NewOrder], topic: str
) -> list[Outcome]:
    params, orders = _prepare(items, topic)
    cur = await conn.execute(PLACE_SQL, params)
    return _outcomes(items, orders, await cur.fetchall())


async def aplace_batch(
    conn: psycopg.AsyncConnection, items: list[NewOrder], topic: str
) -> list[Outcome]:
    ordered = _sorted(items)
    for attempt in range(DEADLOCK_RETRIES):
        try:
            done = await _place_async(conn, ordered, topic)
            break
        except errors.DeadlockDetected:
            if attempt == DEADLOCK_RETRIES - 1:
                raise
        except psycopg.Error:
            if len(items) == 1 or conn.broken:
                raise
            out: list[Outcome] = []
            for it in items:
                try:
                    out.append((await aplace_batch(conn, [it], topic))[0])
                except psycopg.Error as exc:
                    out.append(exc)
            return out
    by_item = {id(it): o for it, o in zip(ordered, done, strict=True)}
    return [by_item[id(it)] for it in items]


@dataclass(slots=True)
class _LoopState:
    loop: asyncio.AbstractEventLoop
    free: int
    pending: deque = field(default_factory=deque)
    idle: list = field(default_factory=list)
    tasks: set = field(default_factory=set)


class OrderBatcher:
    """Group commit for one process: `await place(item)` joins the next batch.

    No background task: a batch is a task that exists only while its requests wait for
    it; when it ends it starts the next one from the requests that arrived meanwhile.
    Connections are kept per event loop (tests run apps on several loops)."""

    def __init__(
        self, dsn: str, ledger: Ledger, *, slots: int = SLOTS, max_batch: int = MAX_BATCH
    ) -> None:
        self.dsn = dsn
        self.ledger = ledger
        self.topic = ledger.topics.orders
        self.slots = slots
        self.max_batch = max_batch
        self._states: dict[int, _LoopState] = {}

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        st = self._states.get(id(loop))
        if st is None or st.loop is not loop:
            st = self._states[id(loop)] = _LoopState(loop, self.slots)
        return st

    async def place(self, item: NewOrder) -> Order | Replay:
        st = self._state()
        fut: asyncio.Future[Outcome] = st.loop.create_future()
        st.pending.append((item, fut))
        self._pump(st)
        outcome = await fut
        if isinstance(outcome, Contended):  # rare: a read of the stored answer
            return await asyncio.to_thread(settle, self.ledger, item, outcome)
        return settle(self.ledger, item, outcome)

    def _pump(self, st: _LoopState) -> None:
        while st.free and st.pending:
            n = min(len(st.pending), self.max_batch)
            batch = [st.pending.popleft() for _ in range(n)]
            st.free -= 1
            task = st.loop.create_task(self._flush(st, batch))
            st.tasks.add(task)
            task.add_done_callback(st.tasks.discard)

    async def _flush(self, st: _LoopState, batch: list) -> None:
        try:
            conn = st.idle.pop() if st.idle else await self._connect()
            try:
                outcomes = await aplace_batch(conn, [it for it, _ in batch], self.topic)
            except BaseException:
                if not conn.broken and not conn.closed:
                    st.idle.append(conn)
                else:
                    await conn.close()
                raise
            st.idle.append(conn)
            for (_, fut), outcome in zip(batch, outcomes, strict=True):
                if not fut.done():
                    fut.set_result(outcome)
        except BaseException as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
            if not isinstance(exc, Exception):
                raise
        finally:
            st.free += 1
            self._pump(st)

    async def _connect(self) -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, application_name="tapeflow-orders"
        )
