"""A batch of execution-side answers applied to the ledger in a few round trips.

Ledger.apply_batch used to run each event as 8-20 statements under its own savepoint,
each a round trip: ~3 ms an event, so a batch of 100 held its locks for ~0.3 s and the
events behind it waited as long. A batch is now three steps in one transaction:

1. read (one round trip, pipeline mode): lock the orders the events
   name (in id order) and read which event ids are already applied; read the positions
   the fills touch (making the rows of first buys, deleted again if no fill used them),
   lock the open tax lots of the sells, and reserve ids for the lots the buys open.
   The fill reads find their keys through the orders the fills name, in SQL, so they
   need no round trip of their own. Positions are read without a lock (only ledger
   batches change a position's qty, and one account's batches never run at once);
2. apply every event in memory, in order, with the same rules as before
   (schemas.order_states, schemas.positions.apply_fill). Each change goes through the
   `Book`'s journal: an event the ledger refuses (an illegal transition, an overfill or
   oversell, an unknown order) is rolled back in memory, so it leaves no partial
   effect, and is recorded as an anomaly while the rest of the batch applies (what the
   savepoint per event did);
3. write everything the batch changed, one statement per table (unnest arrays), and
   commit, in one round trip: lock the accounts in id order (as order placement does),
   one UPDATE of the accounts sets cash and reservations and bumps each `event_seq` by
   the count of the account's events, which are numbered after it; then the positions
   (after the accounts, as placement takes them), orders, lots, executions.

The account rows are what order placement waits on (it reserves buying power on them).
Until 2026-12-04 the batch locked them first and held them while it read and
computed; at 1,000 orders/s the ledger then spent about half its time waiting for
placements and placements for it (PostgreSQL `Lock:transactionid` on both sides).
Now it holds them for its last round trip only.

Exactly once: the orders are locked before the applied event ids are read, so a
concurrent apply of the same event waits for this commit, then sees it as applied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
import psycopg

from infra import account_events
from infra.fills import cash, qty, record_fill
from infra.ledger import LATE_ENDINGS, Applied
from schemas.marketdata import utc_from_ns
from schemas.oms import ORDER_COLUMNS, Order, encode, order_from_row
from schemas.order_states import (
    OPEN,
    TERMINAL,
    IllegalTransition,
    OrderEvent,
    OrderStatus,
    allowed,
    transition,
)
from schemas.orders import full_reservation
from schemas.positions import FillRefused, Lot

ZERO = Decimal(0)
_MISSING = object()
Key = tuple[UUID, str]  # a position: (account_id, symbol)


class Anomaly(Exception):
    """An answer the ledger must not apply; recorded in ledger_anomalies instead."""


# In the write round trip, before their UPDATE: in id order, as placement locks them.
# NO KEY UPDATE, the lock an UPDATE of these columns takes: FOR UPDATE would also
# conflict with the KEY SHARE lock each new order's foreign key takes on its account,
# which placement takes per order outside its sorted lock order; with FOR UPDATE, fill
# batches racing placements deadlocked placements with each other
# (tests/test_ledger_batch.py, the racing test: 2 of 6 runs).
_LOCK_ACCOUNTS = "SELECT 1 FROM accounts WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE"
# The orders named, and the replacements of those waiting on a replace (an expiry ends
# both); the ARRAY(...) is evaluated once, so both are index lookups. In id order, as
# cancel-all locks an account's open orders (Ledger.cancel_all); NO KEY UPDATE, as the
# UPDATE of their columns would, so rows that reference an order do not wait on it
# (every order lock of the ledger is: Book.order, Ledger's cancel and replace requests).
_LOCK_ORDERS = (
    f"SELECT {ORDER_COLUMNS}, filled_value FROM orders WHERE id = ANY(%(ids)s::uuid[] || "
    "ARRAY(SELECT replaced_by FROM orders WHERE id = ANY(%(ids)s::uuid[]) "
    "AND status = 'pending_replace')) ORDER BY id FOR NO KEY UPDATE"
)
_SEEN = "SELECT id FROM applied_events WHERE id = ANY(%s)"

# The fill reads, over (account_id, symbol) keys `k` given either as arrays (_KEYS) or,
# in the batch's first round trip, through the orders its fills name (_FILL_KEYS: those
# orders are locked by _LOCK_ORDERS earlier in the same round trip), so that they need
# no round trip of their own.
_KEYS = "unnest(%s::uuid[], %s::text[]) AS k(account_id, symbol)"
_FILL_KEYS = (
    "(SELECT DISTINCT account_id, symbol FROM orders WHERE id = ANY(%(fills)s::uuid[]){}) k"
)


def _make_positions(keys: str) -> str:
    return (
        f"INSERT INTO positions (account_id, symbol) SELECT account_id, symbol FROM {keys} "
        "ORDER BY account_id, symbol ON CONFLICT DO NOTHING RETURNING account_id, symbol"
    )


# Positions are read without a lock: only ledger batches change a position's qty, and one
# account's batches never run at once (lanes and partitions go by account); the write
# changes it by a delta, under the lock it takes then, after the account's (see _write).
# Should two ever run at once, a sell still reads the qty after taking its open lots'
# locks (so after the other sell committed), and `qty >= 0` is a CHECK.
def _read_positions(keys: str) -> str:
    return (
        "SELECT p.account_id, p.symbol, p.qty "
        f"FROM positions p JOIN {keys} USING (account_id, symbol)"
    )


def _lock_lots(keys: str) -> str:
    return (
        "SELECT t.account_id, t.symbol, t.id, t.opened_at, t.remaining_qty, t.price "
        f"FROM tax_lots t JOIN {keys} USING (account_id, symbol) WHERE t.remaining_qty > 0 "
        "ORDER BY t.account_id, t.symbol, t.opened_at, t.id FOR UPDATE OF t"
    )


_MAKE_POSITIONS = _make_positions(_KEYS)
_READ_POSITIONS = _read_positions(_KEYS)
_LOCK_LOTS = _lock_lots(_KEYS)
_LOT_IDS = "SELECT nextval(pg_get_serial_sequence('tax_lots', 'id')) FROM generate_series(1, %s)"
_MAKE_FILL_POSITIONS = _make_positions(_FILL_KEYS.format(""))
_READ_FILL_POSITIONS = _read_positions(_FILL_KEYS.format(""))
_LOCK_FILL_LOTS = _lock_lots(_FILL_KEYS.format(" AND side = 'sell'"))
_FILL_LOT_IDS = (  # one per buy fill (a duplicate's id is never used: a gap, no harm)
    "SELECT nextval(pg_get_serial_sequence('tax_lots', 'id')) "
    "FROM unnest(%(fills)s::uuid[]) f(id) JOIN orders o USING (id) WHERE o.side = 'buy'"
)
# In the write round trip, before their UPDATE: in key order, as placement locks them for
# sells (an UPDATE ... FROM unnest locks in whatever order its plan meets the rows).
_LOCK_POSITIONS = (
    f"SELECT 1 FROM positions p JOIN {_KEYS} USING (account_id, symbol) "
    "ORDER BY p.account_id, p.symbol FOR NO KEY UPDATE OF p"
)


class Book:
    """The rows a batch reads and changes, in memory. Every change goes through `assign`
    (or appends to a list) so `undo` can take back one event's changes."""

    def __init__(self, conn: psycopg.Connection, now: datetime) -> None:
        self.conn, self.now = conn, now
        self.orders: dict[UUID, Order] = {}
        self.filled_value: dict[UUID, Decimal] = {}
        self.missing: set[UUID] = set()  # order ids the ledger does not have
        self.loaded: dict[UUID, Order] = {}  # as read: the orders that differ are written
        self.positions: dict[Key, Decimal] = {}  # qty of the locked position rows
        self.made: set[Key] = set()  # rows this batch made (deleted again if no fill used them)
        self.filled: dict[Key, None] = {}  # positions a fill of the batch changed
        self.lots: dict[Key, tuple[Lot, ...]] = {}  # open lots, oldest first
        self.lots_read: dict[int, Decimal] = {}  # remaining_qty as read
        self.lot_ids: list[int] = []  # reserved for the lots buys open
        self.next_lot = 0
        # effects
        self.accounts: dict[UUID, tuple[Decimal, Decimal]] = {}  # cash, reserved deltas
        self.position_deltas: dict[Key, tuple[Decimal, Decimal, Decimal]] = {}
        self.executions: list[tuple] = []
        self.new_lots: list[tuple] = []  # (id, account, symbol, execution, at, qty, price)
        self.closures: list[tuple] = []
        self.notes: list[tuple[UUID, str, dict | None, Decimal | None]] = []
        self._journal: list[tuple[dict, Any, Any]] = []

    # -- the journal ----------------------------------------------------------------------

    def assign(self, d: dict, k: Any, v: Any) -> None:
        self._journal.append((d, k, d.get(k, _MISSING)))
        d[k] = v

    def mark(self) -> tuple[int, ...]:
        lists = (self.executions, self.new_lots, self.closures, self.notes)
        return (len(self._journal), self.next_lot, *map(len, lists))

    def undo(self, mark: tuple[int, ...]) -> None:
        journal, self.next_lot, *lengths = mark
        while len(self._journal) > journal:
            d, k, old = self._journal.pop()
            if old is _MISSING:
                del d[k]
            else:
                d[k] = old
        for lst, n in zip(
            (self.executions, self.new_lots, self.closures, self.notes), lengths, strict=True
        ):
            del lst[n:]

    # -- reads ----------------------------------------------------------------------------

    def add_orders(self, rows: list[tuple]) -> None:
        for row in rows:
            order = order_from_row(row[:-1])
            self.orders[order.id] = self.loaded[order.id] = order
            self.filled_value[order.id] = row[-1]

    def order(self, order_id: UUID) -> Order:
        """The order as the batch left it so far; locked (read now if the batch's first
        read did not have it)."""
        got = self.orders.get(order_id)
        if got is not None:
            return got
        if order_id not in self.missing:
            rows = self.conn.execute(
                f"SELECT {ORDER_COLUMNS}, filled_value FROM orders WHERE id = %s FOR NO KEY UPDATE",
                (order_id,),
            ).fetchall()
            self.add_orders(rows)
            if rows:
                return self.orders[order_id]
            self.missing.add(order_id)
        raise Anomaly(f"no order {order_id}")

    def position(self, key: Key) -> Decimal:
        """The position's quantity (its row locked; made if missing)."""
        if key not in self.positions:
            self.read_fill_rows([key], [])
        return self.positions[key]

    def open_lots(self, key: Key) -> tuple[Lot, ...]:
        """The position's open lots, oldest first (locked), with those this batch opened."""
        if key not in self.lots:
            self.read_fill_rows([], [key])
        return self.lots[key]

    def read_fill_rows(self, keys: list[Key], sells: list[Key], buys: int = 0) -> None:
        """In one round trip: make the missing position rows of `keys` and read them; lock
        the open lots of `sells`; reserve `buys` ids for new lots. (The batch's first round
        trip reads all this for its fills; this is for what an event finds missing.)"""
        conn = self.conn
        with conn.pipeline():
            made = conn.execute(_MAKE_POSITIONS, _columns(keys)) if keys else None
            lots = conn.execute(_LOCK_LOTS, _columns(sells)) if sells else None
            positions = conn.execute(_READ_POSITIONS, _columns(keys)) if keys else None
            ids = conn.execute(_LOT_IDS, (buys,)) if buys else None
            self.take_fill_rows(made, positions, lots, ids, sells)

    def take_fill_rows(
        self,
        made: psycopg.Cursor | None,
        positions: psycopg.Cursor | None,
        lots: psycopg.Cursor | None,
        ids: psycopg.Cursor | None,
        sells: list[Key],
    ) -> None:
        """The results of the fill reads (read_fill_rows, or the batch's first round trip):
        position rows made and read, the open lots of `sells`, lot ids reserved."""
        if made is not None and positions is not None:
            self.made.update((a, s) for a, s in made.fetchall())
            self.positions.update({(a, s): q for a, s, q in positions.fetchall()})
        if lots is not None:
            found: dict[Key, list[Lot]] = {key: [] for key in sells}
            for a, s, *lot in lots.fetchall():
                found.setdefault((a, s), []).append(Lot(*lot))
                self.lots_read[lot[0]] = lot[2]
            for lot_id, a, s, _, at, q, price in self.new_lots:  # opened by this batch
                if (a, s) in found:
                    found[(a, s)].append(Lot(lot_id, at, q, price))
            self.lots.update({key: tuple(v) for key, v in found.items()})
        if ids is not None:
            self.lot_ids += sorted(r[0] for r in ids.fetchall())

    # -- changes --------------------------------------------------------------------------

    def put(self, order: Order, **changes: Any) -> Order:
        new = replace(order, **changes)
        self.assign(self.orders, order.id, new)
        return new

    def add_cash(self, account_id: UUID, cash_delta: Decimal, reserved_delta: Decimal) -> None:
        c, r = self.accounts.get(account_id, (ZERO, ZERO))
        self.assign(self.accounts, account_id, (c + cash_delta, r + reserved_delta))

    def add_position(
        self, key: Key, qty_delta: Decimal = ZERO, reserved: Decimal = ZERO, cost: Decimal = ZERO
    ) -> None:
        q, r, c = self.position_deltas.get(key, (ZERO, ZERO, ZERO))
        self.assign(self.position_deltas, key, (q + qty_delta, r + reserved, c + cost))
        if qty_delta:
            self.assign(self.positions, key, qty(self.positions[key] + qty_delta))
            self.assign(self.filled, key, None)

    def open_lot(
        self, key: Key, execution_id: str, at: datetime, q: Decimal, price: Decimal
    ) -> None:
        if self.next_lot == len(self.lot_ids):  # more buys than the first read counted
            self.read_fill_rows([], [], 16)
        lot = Lot(self.lot_ids[self.next_lot], at, qty(q), cash(price))
        self.next_lot += 1
        self.new_lots.append((lot.id, *key, execution_id, at, lot.remaining_qty, lot.price))
        if key in self.lots:
            self.assign(self.lots, key, (*self.lots[key], lot))

    def close_lots(self, key: Key, taken: dict[int, Decimal]) -> None:
        lots = tuple(
            replace(lot, remaining_qty=lot.remaining_qty - taken[lot.id])
            if lot.id in taken
            else lot
            for lot in self.lots[key]
        )
        self.assign(self.lots, key, lots)

    def note(
        self,
        order_id: UUID,
        event: OrderEvent | str,
        fill: dict | None = None,
        position_qty: Decimal | None = None,
    ) -> None:
        name = account_events.EVENT_NAMES[event] if isinstance(event, OrderEvent) else event
        self.notes.append((order_id, name, fill, position_qty))

    # -- the order state machine, as Ledger._move / _release / _transfer did it -----------

    def move(
        self,
        order_id: UUID,
        event: OrderEvent,
        at: datetime,
        stamp: str | None,
        reason: str | None = None,
    ) -> None:
        order = self.orders[order_id]
        status = transition(order.status, event, has_fills=order.filled_qty > 0)
        changes: dict[str, Any] = {
            "status": status,
            "updated_at": self.now,
            "version": order.version + 1,
        }
        if stamp and getattr(order, stamp) is None:
            changes[stamp] = at
        if reason is not None:
            changes["reject_reason"] = reason
        self.put(order, **changes)
        self.note(order_id, event)

    def release(self, order_id: UUID) -> None:
        """Give back everything the order still reserves."""
        order = self.orders[order_id]
        if order.reserved_cash:
            self.add_cash(order.account_id, ZERO, -order.reserved_cash)
        if order.reserved_qty:
            self.add_position((order.account_id, order.symbol), reserved=-order.reserved_qty)
        self.put(order, reserved_cash=cash(ZERO), reserved_qty=qty(ZERO))

    def transfer(self, old_id: UUID, new_id: UUID) -> None:
        """A confirmed replace: the new order now reserves exactly its full amount, made of
        what it added plus the old order's reservation; any excess goes back."""
        old, new = self.orders[old_id], self.orders[new_id]
        need_cash, need_qty = full_reservation(new.side, new.qty, new.notional, new.reserve_price)
        held_cash = old.reserved_cash + new.reserved_cash
        held_qty = old.reserved_qty + new.reserved_qty
        if need_cash > held_cash or need_qty > held_qty:
            raise Anomaly(
                f"replace of {old.id}: {new.id} needs {need_cash}/{need_qty}, "
                f"holds {held_cash}/{held_qty}"
            )
        if held_cash - need_cash:
            self.add_cash(old.account_id, ZERO, -(held_cash - need_cash))
        if held_qty - need_qty:
            self.add_position((old.account_id, old.symbol), reserved=-(held_qty - need_qty))
        self.put(old, reserved_cash=cash(ZERO), reserved_qty=qty(ZERO))
        self.put(new, reserved_cash=cash(need_cash), reserved_qty=qty(need_qty))


def _columns(keys: list[Key]) -> tuple[list[UUID], list[str]]:
    return [k[0] for k in keys], [k[1] for k in keys]


def _apply(book: Book, event: dict, order: Order, kind: str, at: datetime) -> None:
    """One answer on the book (Ledger._apply before batches, rule for rule)."""
    if order.status == OrderStatus.EXPIRED and kind in LATE_ENDINGS:
        # End of day (infra/eod.py) expired it in the ledger before the desk ended it
        # on its own: nothing is left to end or release. A late fill or acknowledgement
        # still is an anomaly (the desk worked an order the ledger had closed).
        return
    if kind == "acknowledged":
        book.move(order.id, OrderEvent.ACKNOWLEDGE, at, "submitted_at")
    elif kind == "rejected":
        book.release(order.id)
        book.move(order.id, OrderEvent.REJECT, at, "failed_at", reason=event.get("reason", ""))
    elif kind == "canceled":
        book.release(order.id)
        book.move(order.id, OrderEvent.CANCEL, at, "canceled_at")
    elif kind == "expired":
        if order.status == OrderStatus.PENDING_REPLACE and order.replaced_by is not None:
            # The replace can no longer take effect: its new order goes too.
            new = book.order(order.replaced_by)
            if new.status in OPEN:
                book.release(new.id)
                end = OrderEvent.REJECT if allowed(new.status, OrderEvent.REJECT) else None
                book.move(
                    new.id,
                    end or OrderEvent.EXPIRE,
                    at,
                    "failed_at" if end else "expired_at",
                    reason="the order it replaces expired" if end else None,
                )
        book.release(order.id)
        book.move(order.id, OrderEvent.EXPIRE, at, "expired_at")
    elif kind == "cancel_rejected":
        # Too late because the order already filled (or ended): nothing to restore.
        if order.status not in TERMINAL:
            book.move(order.id, OrderEvent.CANCEL_REJECT, at, None)
    elif kind == "replaced":
        new = _replacement(book, order, event)
        transition(order.status, OrderEvent.REPLACE)  # both legal before any change
        transition(new.status, OrderEvent.ACKNOWLEDGE)
        book.transfer(order.id, new.id)  # first: a replaced order reserves nothing
        book.move(order.id, OrderEvent.REPLACE, at, "replaced_at")
        book.move(new.id, OrderEvent.ACKNOWLEDGE, at, "submitted_at")
    elif kind == "replace_rejected":
        new = _replacement(book, order, event)
        transition(new.status, OrderEvent.REJECT)  # legal before any change
        # The old order may have filled (or expired) before the replace reached the
        # desk, which is why it was refused: then only the replacement goes.
        if order.status not in TERMINAL:
            book.move(order.id, OrderEvent.REPLACE_REJECT, at, None)
        book.release(new.id)
        book.move(new.id, OrderEvent.REJECT, at, "failed_at", reason=event.get("reason", ""))
    elif kind == "fill":
        status, held = record_fill(book, order, event, at)
        done = status == OrderStatus.FILLED
        book.note(order.id, "fill" if done else "partial_fill", fill=event, position_qty=held)
    else:
        raise Anomaly(f"unknown answer kind {kind!r}")


def _replacement(book: Book, old: Order, event: dict) -> Order:
    """The order a replace answer names; it must be the one replacing `old`."""
    new = book.order(UUID(str(event["replaced_by"])))
    if new.replaces != old.id or old.replaced_by != new.id:
        raise Anomaly(f"order {new.id} does not replace {old.id}")
    return new


def _parse(event: dict) -> tuple[str, UUID, str, datetime]:
    return (
        str(event["event_id"]),
        UUID(str(event["order_id"])),
        event["kind"],
        utc_from_ns(int(event["at"])),
    )


_APPLIED_FILLS = "SELECT id, qty, price, venue FROM executions WHERE id = ANY(%s)"


def _conflicting_redeliveries(
    conn: psycopg.Connection, events: list[dict[str, Any]], seen: set[str]
) -> dict[str, str]:
    """Fills applied before whose redelivery says something else: event id -> why.

    A fill's id is its order's fill number (fill:<order>:<n>), and an execution flow
    restarted from its last snapshot decides again from that point, possibly at another
    moment of the market than before the crash, so a redelivered id may carry another
    quantity, price or venue. The ledger keeps what it applied (applying both would
    execute the order twice), and records the difference as an anomaly for
    reconciliation instead of dropping it as an ordinary duplicate. A read of its own,
    only when a batch redelivers fills: after a restart, not in the steady flow."""
    again = {
        str(e.get("exec_id") or e["event_id"]): e
        for e in events
        if e.get("kind") == "fill" and str(e["event_id"]) in seen
    }
    if not again:
        return {}
    out = {}
    for exec_id, *applied in conn.execute(_APPLIED_FILLS, (list(again),)).fetchall():
        event = again[exec_id]
        now = (Decimal(str(event["qty"])), Decimal(str(event["price"])), str(event.get("venue")))
        if now != tuple(applied):
            out[str(event["event_id"])] = (
                f"conflicting redelivery: fill {exec_id} was applied as {applied[0]} at "
                f"{applied[1]} on {applied[2]}; redelivered as {now[0]} at {now[1]} on {now[2]}"
            )
    return out


def apply_events(
    conn: psycopg.Connection, events: list[dict[str, Any]]
) -> Callable[[], list[Applied]]:
    """Apply `events` in order in the caller's transaction (see the module docstring).

    The writes are only queued: the caller commits in the same round trip (pipeline
    mode), then calls the returned function for the results."""
    parsed = [_parse(e) for e in events]  # malformed: raise before anything is read
    named = {p[1] for p in parsed}
    for event in events:
        if event.get("replaced_by"):
            with contextlib.suppress(ValueError):  # raised when its event applies
                named.add(UUID(str(event["replaced_by"])))
    fill_ids = [p[1] for p in parsed if p[2] == "fill"]
    fills = {"fills": fill_ids}
    # Queued in the caller's pipeline: one round trip for them all.
    now_cur = conn.execute("SELECT now()")
    orders_cur = conn.execute(_LOCK_ORDERS, {"ids": sorted(named)})
    seen_cur = conn.execute(_SEEN, ([p[0] for p in parsed],))
    if fill_ids:
        made = conn.execute(_MAKE_FILL_POSITIONS, fills)
        lots = conn.execute(_LOCK_FILL_LOTS, fills)
        positions = conn.execute(_READ_FILL_POSITIONS, fills)  # after the sells' lots' locks
        ids = conn.execute(_FILL_LOT_IDS, fills)
    now_row = now_cur.fetchone()
    assert now_row is not None
    book = Book(conn, now_row[0])
    book.add_orders(orders_cur.fetchall())
    book.missing = named - book.orders.keys()
    seen = {r[0] for r in seen_cur.fetchall()}
    conflicts = _conflicting_redeliveries(conn, events, seen)
    if fill_ids:
        sells = {
            (o.account_id, o.symbol): None
            for o in map(book.orders.get, fill_ids)
            if o is not None and o.side == "sell"
        }
        book.take_fill_rows(made, positions, lots, ids, sorted(sells))

    out: list[Applied | None] = []
    applied: list[tuple[str, UUID, str]] = []
    anomalies: list[tuple[str, UUID, str, str, str]] = []
    rendered: list[tuple[int, UUID, str, UUID, datetime, dict]] = []  # (out index, ...)
    for event, (event_id, order_id, kind, at) in zip(events, parsed, strict=True):
        if event_id in conflicts:
            reason = conflicts[event_id]
            anomalies.append((event_id, order_id, kind, reason, encode(event).decode()))
            out.append(Applied(event_id, "anomaly", reason))
            continue
        if event_id in seen:
            out.append(Applied(event_id, "duplicate"))
            continue
        mark = book.mark()
        try:
            order = book.order(order_id)
            _apply(book, event, order, kind, at)
        except (IllegalTransition, Anomaly, FillRefused) as exc:
            book.undo(mark)
            anomalies.append((event_id, order_id, kind, str(exc), encode(event).decode()))
            if order_id in book.orders:
                # Settled for good: a redelivery must not apply it later, when the order
                # may have moved on (the same events always leave the same ledger).
                seen.add(event_id)
                applied.append((event_id, order_id, f"anomaly:{kind}"))
            out.append(Applied(event_id, "anomaly", str(exc)))
            continue
        seen.add(event_id)
        applied.append((event_id, order_id, kind))
        for noted_id, name, fill, held in book.notes[mark[-1] :]:
            noted = book.orders[noted_id]  # as the event left it
            payload = account_events.payload(noted, name, at, fill, held)
            rendered.append((len(out), noted.account_id, name, noted_id, at, payload))
        out.append(None)  # filled in with its account events after the write

    written = _write(book, applied, anomalies, rendered)

    def results() -> list[Applied]:
        by_index = written()
        return [
            result or Applied(event_id, "applied", events=tuple(by_index.get(i, ())))
            for i, (result, (event_id, *_)) in enumerate(zip(out, parsed, strict=True))
        ]

    return results


def _write(
    book: Book,
    applied: list[tuple[str, UUID, str]],
    anomalies: list[tuple[str, UUID, str, str, str]],
    rendered: list[tuple[int, UUID, str, UUID, datetime, dict]],
) -> Callable[[], dict[int, list[account_events.AccountEvent]]]:
    """Every change of the batch, one statement per table, queued for the caller's round
    trip (with its commit); a function that returns the account events written, by the
    index of the event that wrote them, once that round trip is done.

    The account rows are locked here, first (in id order, as order placement locks
    them), then the position rows: the batch holds them for this one round trip only,
    not while it reads and computes."""
    conn = book.conn
    events_cur = _write_accounts(conn, book, rendered)
    _many(conn, _INSERT_APPLIED, applied)
    _many(conn, _INSERT_EXECUTIONS, book.executions)
    lots_left = {lot.id: lot.remaining_qty for lots in book.lots.values() for lot in lots}
    new_lots = [
        (*row[:-2], lots_left.get(row[0], row[-2]), row[-2], row[-1]) for row in book.new_lots
    ]
    _many(conn, _INSERT_LOTS, new_lots)
    changed_lots = [
        (lot_id, left)
        for lot_id, left in lots_left.items()
        if lot_id in book.lots_read and book.lots_read[lot_id] != left
    ]
    _many(conn, _UPDATE_LOTS, changed_lots)
    _many(conn, _INSERT_CLOSURES, book.closures)
    changed = [
        _order_row(o, book.filled_value[o.id])
        for oid, o in book.orders.items()
        if o is not book.loaded.get(oid)
    ]
    _many(conn, _UPDATE_ORDERS, changed)
    deltas = sorted((a, s, *d) for (a, s), d in book.position_deltas.items() if any(d))
    if deltas:
        conn.execute(_LOCK_POSITIONS, _columns([(a, s) for a, s, *_ in deltas]))
    _many(conn, _UPDATE_POSITIONS, deltas)
    unused = sorted(k for k in book.made if k not in book.filled)
    if unused:  # fills that were refused: no empty row left behind
        conn.execute(_DELETE_POSITIONS, _columns(unused))
    _many(conn, _INSERT_ANOMALIES, anomalies)

    def written() -> dict[int, list[account_events.AccountEvent]]:
        returned = events_cur.fetchall() if events_cur is not None else []
        by_seq = {(a, int(seq)): text.encode() for a, seq, text in returned}
        seqs: dict[UUID, list[int]] = {}
        for a, seq in sorted(by_seq):
            seqs.setdefault(a, []).append(seq)
        out: dict[int, list[account_events.AccountEvent]] = {}
        counters: dict[UUID, int] = {}
        for index, account_id, *_ in rendered:
            k = counters.get(account_id, 0)
            counters[account_id] = k + 1
            seq = seqs[account_id][k]
            out.setdefault(index, []).append(
                account_events.AccountEvent(account_id, seq, by_seq[(account_id, seq)])
            )
        return out

    return written


def _write_accounts(
    conn: psycopg.Connection, book: Book, rendered: list[tuple]
) -> psycopg.Cursor | None:
    """Cash and reservations of the batch's accounts and their events, numbered after the
    account's last one, in one statement; the cursor of the written events."""
    counts: dict[UUID, int] = {}
    for _, account_id, *_ in rendered:
        counts[account_id] = counts.get(account_id, 0) + 1
    ids = sorted(set(counts) | {a for a, d in book.accounts.items() if any(d)})
    if not ids:
        return None
    conn.execute(_LOCK_ACCOUNTS, (ids,))
    k: dict[UUID, int] = {}
    ev_cols: list[list] = [[], [], [], [], [], []]
    for _, account_id, name, order_id, at, payload in rendered:
        k[account_id] = k.get(account_id, 0) + 1
        row = (account_id, k[account_id], name, order_id, at, orjson.dumps(payload).decode())
        for col, v in zip(ev_cols, row, strict=True):
            col.append(v)
    acc_cols = (
        ids,
        [counts.get(a, 0) for a in ids],
        [book.accounts.get(a, (ZERO, ZERO))[0] for a in ids],
        [book.accounts.get(a, (ZERO, ZERO))[1] for a in ids],
    )
    return conn.execute(_ACCOUNTS_AND_EVENTS, (*acc_cols, *ev_cols))


def _many(conn: psycopg.Connection, sql: str, rows: list[tuple]) -> None:
    """`sql` with one array parameter per column of `rows` (nothing if no rows)."""
    if not rows:
        return
    conn.execute(sql, [list(col) for col in zip(*rows, strict=True)])


def _unnest(*cols: tuple[str, str]) -> str:
    args = ", ".join(f"%b::{t}[]" for _, t in cols)  # binary: no text escaping
    return f"unnest({args}) AS u({', '.join(n for n, _ in cols)})"


_INSERT_APPLIED = (
    "INSERT INTO applied_events (id, order_id, kind) SELECT DISTINCT ON (id) * FROM "
    + _unnest(("id", "text"), ("order_id", "uuid"), ("kind", "text"))
    + " ON CONFLICT (id) DO NOTHING"
)
_INSERT_EXECUTIONS = (
    "INSERT INTO executions (id, order_id, account_id, symbol, side, qty, price, venue, "
    "route, executed_at) SELECT id, order_id, account_id, symbol, side, qty, price, venue, "
    "route::jsonb, executed_at FROM "
    + _unnest(
        ("id", "text"),
        ("order_id", "uuid"),
        ("account_id", "uuid"),
        ("symbol", "text"),
        ("side", "text"),
        ("qty", "numeric"),
        ("price", "numeric"),
        ("venue", "text"),
        ("route", "text"),
        ("executed_at", "timestamptz"),
    )
)
_INSERT_LOTS = (
    "INSERT INTO tax_lots (id, account_id, symbol, execution_id, opened_at, remaining_qty, "
    "qty, price) SELECT * FROM "
    + _unnest(
        ("id", "int8"),
        ("account_id", "uuid"),
        ("symbol", "text"),
        ("execution_id", "text"),
        ("opened_at", "timestamptz"),
        ("remaining_qty", "numeric"),
        ("qty", "numeric"),
        ("price", "numeric"),
    )
)
_UPDATE_LOTS = (
    "UPDATE tax_lots t SET remaining_qty = u.remaining_qty FROM "
    + _unnest(("id", "int8"), ("remaining_qty", "numeric"))
    + " WHERE t.id = u.id"
)
_INSERT_CLOSURES = (
    "INSERT INTO lot_closures (lot_id, account_id, symbol, execution_id, closed_at, qty, "
    "proceeds, cost_basis, realized_pnl) SELECT * FROM "
    + _unnest(
        ("lot_id", "int8"),
        ("account_id", "uuid"),
        ("symbol", "text"),
        ("execution_id", "text"),
        ("closed_at", "timestamptz"),
        ("qty", "numeric"),
        ("proceeds", "numeric"),
        ("cost_basis", "numeric"),
        ("realized_pnl", "numeric"),
    )
)
# The columns a batch may change, written as the book left them (the rows are locked).
_ORDER_SET = (
    ("status", "text"),
    ("filled_qty", "numeric"),
    ("filled_value", "numeric"),
    ("filled_avg_price", "numeric"),
    ("reserved_cash", "numeric"),
    ("reserved_qty", "numeric"),
    ("hwm", "numeric"),
    ("reject_reason", "text"),
    ("submitted_at", "timestamptz"),
    ("filled_at", "timestamptz"),
    ("canceled_at", "timestamptz"),
    ("expired_at", "timestamptz"),
    ("replaced_at", "timestamptz"),
    ("failed_at", "timestamptz"),
    ("version", "int4"),
)
_UPDATE_ORDERS = (
    "UPDATE orders o SET "
    + ", ".join(f"{n} = u.{n}" for n, _ in _ORDER_SET)
    + ", updated_at = now() FROM "
    + _unnest(("id", "uuid"), *_ORDER_SET)
    + " WHERE o.id = u.id"
)


def _order_row(o: Order, filled_value: Decimal) -> tuple:
    return (
        o.id,
        str(o.status),
        o.filled_qty,
        filled_value,
        o.filled_avg_price,
        o.reserved_cash,
        o.reserved_qty,
        o.hwm,
        o.reject_reason,
        o.submitted_at,
        o.filled_at,
        o.canceled_at,
        o.expired_at,
        o.replaced_at,
        o.failed_at,
        o.version,
    )


_UPDATE_POSITIONS = (
    "UPDATE positions p SET qty = p.qty + u.dq, reserved_qty = p.reserved_qty + u.dr, "
    "cost_basis = p.cost_basis + u.dc, updated_at = now() FROM "
    + _unnest(
        ("account_id", "uuid"),
        ("symbol", "text"),
        ("dq", "numeric"),
        ("dr", "numeric"),
        ("dc", "numeric"),
    )
    + " WHERE p.account_id = u.account_id AND p.symbol = u.symbol"
)
_DELETE_POSITIONS = (
    f"DELETE FROM positions p USING {_KEYS} WHERE p.account_id = k.account_id "
    "AND p.symbol = k.symbol AND p.qty = 0 AND p.reserved_qty = 0"
)
# Each account's events are numbered after its event_seq, which the same statement
# bumps by their count: the row stays locked to the commit, so the numbers have no
# holes and follow commit order (infra/account_events.py).
_ACCOUNTS_AND_EVENTS = (
    "WITH b AS (UPDATE accounts a SET event_seq = a.event_seq + u.n, "
    "cash = a.cash + u.dc, reserved_cash = a.reserved_cash + u.dr, "
    "updated_at = CASE WHEN u.dc <> 0 OR u.dr <> 0 THEN now() ELSE a.updated_at END FROM "
    + _unnest(("id", "uuid"), ("n", "int4"), ("dc", "numeric"), ("dr", "numeric"))
    + " WHERE a.id = u.id RETURNING a.id, a.event_seq - u.n AS base) "
    "INSERT INTO account_events (account_id, seq, event, order_id, at, payload) "
    "SELECT e.a, b.base + e.k, e.ev, e.o, e.at, "
    "jsonb_set(e.p::jsonb, '{seq}', to_jsonb(b.base + e.k)) FROM "
    + _unnest(
        ("a", "uuid"),
        ("k", "int4"),
        ("ev", "text"),
        ("o", "uuid"),
        ("at", "timestamptz"),
        ("p", "text"),
    ).replace("AS u(", "AS e(")
    + " JOIN b ON b.id = e.a RETURNING account_id, seq, payload::text"
)
_INSERT_ANOMALIES = (
    "INSERT INTO ledger_anomalies (event_id, order_id, kind, reason, payload) "
    "SELECT DISTINCT ON (event_id) event_id, order_id, kind, reason, payload::jsonb FROM "
    + _unnest(
        ("event_id", "text"),
        ("order_id", "uuid"),
        ("kind", "text"),
        ("reason", "text"),
        ("payload", "text"),
    )
    + " ON CONFLICT (event_id) DO NOTHING"
)
