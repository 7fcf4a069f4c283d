"""Price alerts in PostgreSQL: an account's alerts (the API) and their firings (the flow).

`AccountAlerts(pool, account_id, topic)` is the API's only way in: every statement is
filtered by the account, so another account's alert is simply not found. Each change
(create, PATCH, cancel) bumps the alert's `version` and writes an outbox row to the
alerts topic (keyed by symbol) in the same transaction; the outbox relay
(infra/outbox.py) moves it to Kafka, where the alerts flow (flows/alerts.py) reads
every definition, so restarts and replays rebuild the flow's state.

`record_firing` is the flow's sink: PostgreSQL decides whether a firing the flow
computed is stored, in one transaction that locks the alert row:
- the firing's id is derived from the alert, its version and the crossing market
  event (schemas/alerts.py), and is inserted with ON CONFLICT DO NOTHING: an event
  evaluated again (a restart, a replay) inserts nothing and notifies nobody;
- the alert must still be active and at the firing's version (a cancel or change that
  the flow had not yet seen wins);
- a one-shot alert turns `triggered` with its first firing, so it never fires twice
  whatever the flow re-evaluates; a recurring one refuses a firing within its
  cool-down of another (in feed time), which also covers a re-evaluation that sees
  its inputs in another order.
A stored firing is appended to the owner's account events (infra/account_events.py,
event "alert") in the same transaction, and published to Redis `account:{id}` after
the commit, so WS /v1/stream delivers it exactly like order events (`alerts`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
import psycopg
from psycopg_pool import ConnectionPool

from infra import account_events
from infra.account_events import AccountEvent
from infra.ledger import OUTBOX_CHANNEL
from schemas.alerts import (
    PRICE,
    AlertDef,
    AlertRefused,
    AlertTerms,
    Firing,
    check_terms,
    patched,
)
from schemas.marketdata import utc_from_ns

MAX_ACTIVE = 200  # active alerts per account
MAX_LIST = 500

_COLUMNS = (
    "id, account_id, symbol, type, price, percent, direction, source, recurring, cooldown_s, "
    "note, status, version, reference_close, reference_day, fire_count, last_fired_at, "
    "created_at, updated_at, triggered_at, canceled_at"
)
_FIRE_COLUMNS = (
    "id, alert_id, alert_version, symbol, fired_at, event_ns, crossed, price, level, "
    "previous_close, change_percent, source, venue, trade_id, seq, recorded_at"
)


class AlertNotFound(Exception):
    pass


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _dec(d: Decimal | None) -> str | None:
    return None if d is None else str(d)


def _level(d: Decimal) -> str:
    """4 places, or as many as a percent level needs (up to 10)."""
    q = d.quantize(PRICE)
    return str(q) if q == d else format(d.normalize(), "f")


def alert_json(row: Sequence[Any]) -> dict[str, Any]:
    """An alert as the API and the stream render it (a row of _COLUMNS)."""
    (
        aid,
        _account,
        symbol,
        type_,
        price,
        percent,
        direction,
        source,
        recurring,
        cooldown_s,
        note,
        status,
        version,
        ref_close,
        ref_day,
        fire_count,
        last_fired_at,
        created_at,
        updated_at,
        triggered_at,
        canceled_at,
    ) = row
    return {
        "id": str(aid),
        "symbol": symbol,
        "type": type_,
        "price": _dec(price),
        "percent": _dec(percent),
        "direction": direction,
        "source": source,
        "recurring": recurring,
        "cooldown_s": cooldown_s,
        "note": note,
        "status": status,
        "version": version,
        "reference_close": _dec(ref_close),
        "reference_day": None if ref_day is None else ref_day.isoformat(),
        "fire_count": fire_count,
        "last_fired_at": _iso(last_fired_at),
        "created_at": _iso(created_at),
        "updated_at": _iso(updated_at),
        "triggered_at": _iso(triggered_at),
        "canceled_at": _iso(canceled_at),
    }


def fire_json(row: Sequence[Any]) -> dict[str, Any]:
    """A firing as the API and the stream render it (a row of _FIRE_COLUMNS)."""
    (
        fid,
        alert_id,
        version,
        symbol,
        fired_at,
        event_ns,
        crossed,
        price,
        level,
        prev_close,
        change,
        source,
        venue,
        trade_id,
        seq,
        recorded_at,
    ) = row
    return {
        "id": str(fid),
        "alert_id": str(alert_id),
        "alert_version": version,
        "symbol": symbol,
        "fired_at": _iso(fired_at),
        "event_ns": event_ns,
        "crossed": crossed,
        "price": _dec(price),
        "level": _level(level),
        "previous_close": _dec(prev_close),
        "change_percent": _dec(change),
        "source": source,
        "venue": venue,
        "trade_id": trade_id,
        "seq": seq,
        "recorded_at": _iso(recorded_at),
    }


def _terms(row: Sequence[Any]) -> AlertTerms:
    return AlertTerms(
        type=row[3],
        price=row[4],
        percent=row[5],
        direction=row[6],
        source=row[7],
        recurring=row[8],
        cooldown_s=row[9],
        note=row[10],
    )


def definition(row: Sequence[Any]) -> AlertDef:
    """What the flow is told about an alert (a row of _COLUMNS)."""
    return AlertDef(
        id=str(row[0]),
        account_id=str(row[1]),
        symbol=row[2],
        version=row[12],
        status=row[11],
        terms=_terms(row),
        reference_close=row[13],
        reference_day=row[14],
    )


class AccountAlerts:
    """One account's alerts. Methods taking an id raise AlertNotFound for an alert the
    account does not have."""

    def __init__(self, pool: ConnectionPool, account_id: UUID, topic: str) -> None:
        self.pool, self.account_id, self.topic = pool, account_id, topic

    # ------------------------------------------------------------ reads

    def get(self, alert_id: UUID) -> dict[str, Any]:
        with self.pool.connection() as conn:
            return alert_json(self._row(conn, alert_id))

    def list(
        self, status: str | None, symbols: Sequence[str] | None, limit: int
    ) -> list[dict[str, Any]]:
        """Newest first; status None: every status."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM alerts WHERE account_id = %s "
                "AND (%s::text IS NULL OR status = %s) "
                "AND (%s::text[] IS NULL OR symbol = ANY(%s)) "
                "ORDER BY created_at DESC, id DESC LIMIT %s",
                (self.account_id, status, status, symbols, symbols, limit),
            ).fetchall()
        return [alert_json(r) for r in rows]

    def fires(self, alert_id: UUID, limit: int) -> list[dict[str, Any]]:
        """The alert's firings in feed-time order."""
        with self.pool.connection() as conn:
            self._row(conn, alert_id)
            rows = conn.execute(
                f"SELECT {_FIRE_COLUMNS} FROM alert_fires WHERE alert_id = %s "
                "ORDER BY fired_at, id LIMIT %s",
                (alert_id, limit),
            ).fetchall()
        return [fire_json(r) for r in rows]

    # ------------------------------------------------------------ changes

    def create(
        self,
        symbol: str,
        terms: AlertTerms,
        reference_close: Decimal | None = None,
        reference_day: date | None = None,
    ) -> dict[str, Any]:
        terms = check_terms(terms)
        with self.pool.connection() as conn, conn.transaction():
            # Serializes this account's creations so the count holds, without the
            # account row (order placement and the ledger lock that one).
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('alerts:' || %s::text, 0))",
                (self.account_id,),
            )
            active = conn.execute(
                "SELECT count(*) FROM alerts WHERE account_id = %s AND status = 'active'",
                (self.account_id,),
            ).fetchone()
            if active and active[0] >= MAX_ACTIVE:
                raise AlertRefused(
                    "too_many_alerts", f"an account holds at most {MAX_ACTIVE} active alerts"
                )
            row = conn.execute(
                f"INSERT INTO alerts (id, account_id, symbol, type, price, percent, direction, "
                "source, recurring, cooldown_s, note, status, version, reference_close, "
                "reference_day) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'active', 1, "
                f"%s, %s) RETURNING {_COLUMNS}",
                (
                    uuid.uuid4(),
                    self.account_id,
                    symbol,
                    terms.type,
                    terms.price,
                    terms.percent,
                    terms.direction,
                    terms.source,
                    terms.recurring,
                    terms.cooldown_s,
                    terms.note,
                    reference_close,
                    reference_day,
                ),
            ).fetchone()
            assert row is not None
            self._announce(conn, row)
            return alert_json(row)

    def update(self, alert_id: UUID, changes: dict[str, Any]) -> dict[str, Any]:
        """PATCH: the given terms replaced (an active alert only)."""
        with self.pool.connection() as conn, conn.transaction():
            row = self._row(conn, alert_id, lock=True)
            if row[11] != "active":
                raise AlertRefused("alert_not_active", f"alert {alert_id} is {row[11]}")
            terms = patched(_terms(row), changes)
            if set(changes) <= {"note"}:
                # The flow never sees the note: a new version would only make it refuse
                # a firing computed on the current one (a crossing lost to an edit).
                row = conn.execute(
                    f"UPDATE alerts SET note = %s, updated_at = now() WHERE id = %s "
                    f"RETURNING {_COLUMNS}",
                    (terms.note, alert_id),
                ).fetchone()
                assert row is not None
                return alert_json(row)
            row = conn.execute(
                "UPDATE alerts SET price = %s, percent = %s, direction = %s, source = %s, "
                "recurring = %s, cooldown_s = %s, note = %s, version = version + 1, "
                f"updated_at = now() WHERE id = %s RETURNING {_COLUMNS}",
                (
                    terms.price,
                    terms.percent,
                    terms.direction,
                    terms.source,
                    terms.recurring,
                    terms.cooldown_s,
                    terms.note,
                    alert_id,
                ),
            ).fetchone()
            assert row is not None
            self._announce(conn, row)
            return alert_json(row)

    def cancel(self, alert_id: UUID) -> dict[str, Any]:
        """DELETE: an active alert turns canceled; a canceled one stays so (idempotent);
        a triggered one has nothing left to cancel (alert_not_cancelable)."""
        with self.pool.connection() as conn, conn.transaction():
            row = self._row(conn, alert_id, lock=True)
            if row[11] == "canceled":
                return alert_json(row)
            if row[11] != "active":
                raise AlertRefused("alert_not_cancelable", f"alert {alert_id} is {row[11]}")
            row = conn.execute(
                "UPDATE alerts SET status = 'canceled', canceled_at = now(), updated_at = now(), "
                f"version = version + 1 WHERE id = %s RETURNING {_COLUMNS}",
                (alert_id,),
            ).fetchone()
            assert row is not None
            self._announce(conn, row)
            return alert_json(row)

    # ------------------------------------------------------------ statements

    def _row(self, conn: psycopg.Connection, alert_id: UUID, *, lock: bool = False) -> tuple:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM alerts WHERE id = %s AND account_id = %s"
            + (" FOR UPDATE" if lock else ""),
            (alert_id, self.account_id),
        ).fetchone()
        if row is None:
            raise AlertNotFound(str(alert_id))
        return row

    def _announce(self, conn: psycopg.Connection, row: Sequence[Any]) -> None:
        """The alert's definition to the flow, through the outbox, in this transaction."""
        alert = definition(row)
        payload = orjson.dumps({"kind": "alert", "alert": alert.to_json()})
        conn.execute(
            "INSERT INTO outbox (topic, key, payload) VALUES (%s, %s, %s)",
            (self.topic, alert.symbol, payload),
        )
        conn.execute("SELECT pg_notify(%s, '')", (OUTBOX_CHANNEL,))


# ---------------------------------------------------------------------- the flow's sink


_fired_at = utc_from_ns  # PostgreSQL keeps microseconds (event_ns keeps the nanoseconds)


def record_firing(conn: psycopg.Connection, firing: Firing) -> AccountEvent | None:
    """Store `firing` and log it as an account event, in one transaction; None when it is
    not stored (already there, alert no longer active or changed, within the cool-down)."""
    with conn.transaction():
        alert = conn.execute(
            f"SELECT {_COLUMNS} FROM alerts WHERE id = %s FOR UPDATE", (firing.alert_id,)
        ).fetchone()
        if alert is None or alert[11] != "active" or alert[12] != firing.version:
            return None
        recurring, cooldown_s = alert[8], alert[9]
        if recurring:
            near = conn.execute(
                "SELECT 1 FROM alert_fires WHERE alert_id = %s AND id <> %s "
                "AND abs(event_ns - %s) < %s LIMIT 1",
                (firing.alert_id, firing.id, firing.event_ns, cooldown_s * 1_000_000_000),
            ).fetchone()
            if near is not None:
                return None
        fired_at = _fired_at(firing.event_ns)
        fire = conn.execute(
            "INSERT INTO alert_fires (id, alert_id, account_id, alert_version, symbol, fired_at, "
            "event_ns, crossed, price, level, previous_close, change_percent, source, venue, "
            "trade_id, seq) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
            f"%s, 0) ON CONFLICT (id) DO NOTHING RETURNING {_FIRE_COLUMNS}",
            (
                firing.id,
                firing.alert_id,
                alert[1],
                firing.version,
                firing.symbol,
                fired_at,
                firing.event_ns,
                firing.crossed,
                firing.price,
                firing.level,
                firing.previous_close,
                firing.change_percent,
                firing.source,
                firing.venue,
                firing.trade_id,
            ),
        ).fetchone()
        if fire is None:
            return None
        alert = conn.execute(
            "UPDATE alerts SET fire_count = fire_count + 1, "
            "last_fired_at = greatest(last_fired_at, %s), updated_at = now(), "
            "status = CASE WHEN recurring THEN status ELSE 'triggered' END, "
            "triggered_at = CASE WHEN recurring THEN triggered_at ELSE now() END "
            f"WHERE id = %s RETURNING {_COLUMNS}",
            (fired_at, firing.alert_id),
        ).fetchone()
        assert alert is not None
        rendered = fire_json(fire)
        del rendered["seq"]  # the event's own seq says it
        event = account_events.append(
            conn,
            alert[1],
            "alert",
            fired_at,
            {
                "event": "alert",
                "at": rendered["fired_at"],
                "alert": alert_json(alert),
                "fire": rendered,
            },
        )
        conn.execute("UPDATE alert_fires SET seq = %s WHERE id = %s", (event.seq, firing.id))
        return event
