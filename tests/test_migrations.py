"""Alembic migrations on a database of their own (created and dropped here), never the
shared one: upgrade on an empty database, downgrade to nothing, upgrade again."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import errors, sql

from infra.db import current_revision, downgrade, migrate
from infra.settings import Settings

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parent.parent

TABLES_0001 = {
    "users": {"id", "email", "name", "is_operator", "created_at"},
    "accounts": {"id", "user_id", "account_number", "status", "currency", "created_at"},
    "api_keys": {
        "key_id",
        "user_id",
        "name",
        "secret_hash",
        "created_at",
        "last_used_at",
        "revoked_at",
        "rate_limit_per_minute",
    },
    "watchlists": {"id", "account_id", "name", "created_at", "updated_at"},
    "watchlist_symbols": {"watchlist_id", "position", "symbol"},
}
# 0002 adds the ledger: money columns on accounts and its own tables.
LEDGER_TABLES = {
    "cash_transfers",
    "orders",
    "executions",
    "positions",
    "tax_lots",
    "lot_closures",
    "outbox",
    "outbox_progress",
    "idempotency_keys",
    "applied_events",
    "ledger_anomalies",
}
# 0004 adds the account events log (and accounts.event_seq).
EVENT_TABLES = {"account_events"}
# 0005 alerts, 0006 end of day (and accounts.last_equity), 0007 reconciliation reports.
ISSUE_6_TABLES = {
    "0005": {"alerts", "alert_fires"},
    "0006": {"eod_runs", "eod_accounts"},
    "0007": {"reconciliation_reports", "reconciliation_items"},
}
HEAD = "0009"


def head_tables() -> set[str]:
    return set(TABLES_0001) | LEDGER_TABLES | EVENT_TABLES | set().union(*ISSUE_6_TABLES.values())


@pytest.fixture
def empty_db(services: Settings):
    name = f"tapeflow_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(services.postgres, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = services.postgres.rsplit("/", 1)[0] + f"/{name}"
    yield Settings(postgres_url=dsn)
    with psycopg.connect(services.postgres, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def columns(settings: Settings) -> dict[str, set[str]]:
    with psycopg.connect(settings.postgres) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name <> 'alembic_version'"
        ).fetchall()
    out: dict[str, set[str]] = {}
    for table, column in rows:
        out.setdefault(table, set()).add(column)
    return out


def test_upgrade_downgrade_upgrade(empty_db: Settings):
    assert columns(empty_db) == {}
    assert current_revision(empty_db) is None
    migrate(empty_db)
    assert set(columns(empty_db)) == head_tables()
    assert {"cash", "reserved_cash", "buying_power"} <= columns(empty_db)["accounts"]
    assert current_revision(empty_db) == HEAD
    migrate(empty_db)  # idempotent
    assert current_revision(empty_db) == HEAD

    downgrade(empty_db, "0001")  # the ledger comes off cleanly, accounts as they were
    assert columns(empty_db) == TABLES_0001
    assert current_revision(empty_db) == "0001"

    downgrade(empty_db, "base")
    assert columns(empty_db) == {}
    assert current_revision(empty_db) is None

    migrate(empty_db)
    assert set(columns(empty_db)) == head_tables()
    assert current_revision(empty_db) == HEAD


def test_money_is_numeric_and_time_is_utc_in_every_table(empty_db: Settings):
    """DESIGN.md section 3, invariants 5 and 6, as the schema holds them: no float column
    anywhere; prices to 4 places and quantities to 6 (internal sums, such as an order's
    filled_value, may keep more); every timestamp is timestamptz (UTC, microseconds)."""
    migrate(empty_db)
    with psycopg.connect(empty_db.postgres) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type, numeric_scale, datetime_precision "
            "FROM information_schema.columns WHERE table_schema = 'public'"
        ).fetchall()
    by_type: dict[str, list[str]] = {}
    for table, column, kind, _, _ in rows:
        by_type.setdefault(kind, []).append(f"{table}.{column}")
    assert not by_type.get("real") and not by_type.get("double precision")
    assert not by_type.get("timestamp without time zone")
    assert by_type["timestamp with time zone"]
    scale = {f"{t}.{c}": s for t, c, kind, s, _ in rows if kind == "numeric"}
    assert None not in scale.values(), "every NUMERIC has an explicit scale"
    quantities = {k: v for k, v in scale.items() if k.split(".")[1].endswith("qty")}
    prices = {k: v for k, v in scale.items() if k.split(".")[1].endswith("price")}
    assert quantities and set(quantities.values()) == {6}, quantities
    assert prices and set(prices.values()) == {4}, prices
    assert {t for t, _, kind, _, p in rows if kind.startswith("timestamp") and p != 6} == set()


def test_concurrent_upgrades_serialize(empty_db: Settings):
    """`tapeflow up`, the demo and test sessions may migrate at once: separate processes
    (Alembic's context is process-global, so threads would not show anything)."""
    code = "from infra.db import migrate; from infra.settings import Settings; migrate(Settings())"
    env = {**os.environ, "TAPEFLOW_POSTGRES_URL": empty_db.postgres}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    assert set(columns(empty_db)) == head_tables()
    assert current_revision(empty_db) == HEAD


def test_the_schema_enforces_its_rules(empty_db: Settings):
    migrate(empty_db, "0001")
    with psycopg.connect(empty_db.postgres, autocommit=True) as conn:
        user_id = conn.execute(
            "INSERT INTO users (email, name) VALUES ('a@b.c', 'A') RETURNING id"
        ).fetchone()[0]
        # Defaults: not an operator, an active USD account.
        assert conn.execute("SELECT is_operator FROM users").fetchone() == (False,)
        account = conn.execute(
            "INSERT INTO accounts (user_id, account_number) VALUES (%s, '1234567890') "
            "RETURNING status, currency",
            (user_id,),
        ).fetchone()
        assert account == ("active", "USD")
        refused = [
            ("INSERT INTO users (email, name) VALUES ('a@b.c', 'dup')", errors.UniqueViolation),
            ("INSERT INTO users (email, name) VALUES ('A@B.C', 'upper')", errors.CheckViolation),
            (
                f"INSERT INTO accounts (user_id, account_number) VALUES ('{user_id}', '2')",
                errors.UniqueViolation,  # one account per user
            ),
            (
                "INSERT INTO api_keys (key_id, user_id, name, secret_hash) "
                f"VALUES ('nope', '{user_id}', 'k', '\\x00')",
                errors.CheckViolation,
            ),
        ]
        for statement, error in refused:
            with pytest.raises(error):
                conn.execute(statement)
        key = conn.execute(
            "INSERT INTO api_keys (key_id, user_id, name, secret_hash) "
            "VALUES ('TFAAAAAAAAAAAAAAAA', %s, 'k', %s) RETURNING rate_limit_per_minute",
            (user_id, b"\x00" * 32),
        ).fetchone()
        assert key == (200,)
        # Deleting a user takes their account, keys and watchlists with them.
        account_id = conn.execute("SELECT id FROM accounts").fetchone()[0]
        wid = conn.execute(
            "INSERT INTO watchlists (account_id, name) VALUES (%s, 'w') RETURNING id",
            (account_id,),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO watchlist_symbols (watchlist_id, position, symbol) VALUES (%s, 0, 'A')",
            (wid,),
        )
        with pytest.raises(errors.UniqueViolation):
            conn.execute(
                "INSERT INTO watchlist_symbols (watchlist_id, position, symbol) "
                "VALUES (%s, 1, 'A')",
                (wid,),
            )
        conn.execute("DELETE FROM users")
        for table in TABLES_0001:
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table


def test_the_ledger_schema_refuses_impossible_money(empty_db: Settings):
    """The CHECK constraints behind DESIGN.md's invariants, independent of the code."""
    migrate(empty_db)
    with psycopg.connect(empty_db.postgres, autocommit=True) as conn:
        user_id = conn.execute(
            "INSERT INTO users (email, name) VALUES ('a@b.c', 'A') RETURNING id"
        ).fetchone()[0]
        account = conn.execute(
            "INSERT INTO accounts (user_id, account_number, cash) VALUES (%s, '1', 100) "
            "RETURNING id, buying_power",
            (user_id,),
        ).fetchone()
        account_id = account[0]
        assert account[1] == 100
        conn.execute(
            "INSERT INTO positions (account_id, symbol, qty) VALUES (%s, 'AAPL', 5)",
            (account_id,),
        )
        order = (
            "INSERT INTO orders (account_id, client_order_id, symbol, side, type, "
            "time_in_force, qty, notional, filled_qty, status, reserved_cash) "
            "VALUES (%s, %s, 'AAPL', 'buy', 'limit', 'day', %s, %s, %s, %s, %s)"
        )
        refused = [
            ("UPDATE accounts SET cash = -1", ()),
            ("UPDATE accounts SET reserved_cash = 101", ()),  # more reserved than held
            ("UPDATE positions SET qty = -1", ()),
            ("UPDATE positions SET reserved_qty = 6", ()),  # more shares reserved than held
            (order, (account_id, "a", 1, 10, 0, "new", 0)),  # qty and notional
            (order, (account_id, "b", 1, None, 2, "filled", 0)),  # filled beyond qty
            (order, (account_id, "c", 1, None, 0, "canceled", 5)),  # closed yet reserving
            (order, (account_id, "d", 1, None, 0, "lost", 0)),  # not a status
        ]
        for statement, params in refused:
            with pytest.raises(errors.CheckViolation):
                conn.execute(statement, params)
        conn.execute(order, (account_id, "ok", 1, None, 0, "new", 5))
        with pytest.raises(errors.UniqueViolation):  # client_order_id unique per account
            conn.execute(order, (account_id, "ok", 1, None, 0, "new", 5))


def test_0004_account_events_and_the_relay_index(empty_db: Settings):
    migrate(empty_db)
    with psycopg.connect(empty_db.postgres, autocommit=True) as conn:
        index = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'outbox_unsent_topic'"
        ).fetchone()
        assert index is not None and "(topic, id)" in index[0] and "sent_at IS NULL" in index[0]
        user_id = conn.execute(
            "INSERT INTO users (email, name) VALUES ('a@b.c', 'A') RETURNING id"
        ).fetchone()[0]
        account_id, seq = conn.execute(
            "INSERT INTO accounts (user_id, account_number) VALUES (%s, '1') "
            "RETURNING id, event_seq",
            (user_id,),
        ).fetchone()
        assert seq == 0
        row = "INSERT INTO account_events (account_id, seq, event, at, payload) "
        conn.execute(row + "VALUES (%s, 1, 'new', now(), '{}')", (account_id,))
        with pytest.raises(errors.UniqueViolation):  # one event per (account, seq)
            conn.execute(row + "VALUES (%s, 1, 'fill', now(), '{}')", (account_id,))
    downgrade(empty_db, "0003")
    assert "account_events" not in columns(empty_db)
    assert "event_seq" not in columns(empty_db)["accounts"]


def test_0005_to_0007_each_step_down_removes_exactly_its_own(empty_db: Settings):
    migrate(empty_db)
    assert {"last_equity", "last_equity_day"} <= columns(empty_db)["accounts"]
    for revision, below in (("0007", "0006"), ("0006", "0005"), ("0005", "0004")):
        before = set(columns(empty_db))
        downgrade(empty_db, below)
        assert before - set(columns(empty_db)) == ISSUE_6_TABLES[revision]
        assert current_revision(empty_db) == below
    assert "last_equity" not in columns(empty_db)["accounts"]
    with psycopg.connect(empty_db.postgres, autocommit=True) as conn:
        index = conn.execute(
            "SELECT 1 FROM pg_indexes WHERE indexname = 'executions_executed_at'"
        ).fetchone()
    assert index is None
    migrate(empty_db)
    assert current_revision(empty_db) == HEAD


def _place_orders_arities(settings: Settings) -> list[int]:
    with psycopg.connect(settings.postgres, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pronargs FROM pg_proc WHERE proname = 'place_orders' ORDER BY pronargs"
        ).fetchall()
    return [n for (n,) in rows]


def test_0008_replaces_place_orders_and_its_downgrade_restores_0003s(empty_db: Settings):
    migrate(empty_db)
    assert _place_orders_arities(empty_db) == [25]  # with the outbox payloads and answers
    downgrade(empty_db, "0007")
    assert _place_orders_arities(empty_db) == [20]
    migrate(empty_db)
    assert _place_orders_arities(empty_db) == [25]
