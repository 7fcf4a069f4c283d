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

TABLES = {
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
    assert columns(empty_db) == TABLES
    assert current_revision(empty_db) == "0001"
    migrate(empty_db)  # idempotent
    assert current_revision(empty_db) == "0001"

    downgrade(empty_db, "base")
    assert columns(empty_db) == {}
    assert current_revision(empty_db) is None

    migrate(empty_db)
    assert columns(empty_db) == TABLES
    assert current_revision(empty_db) == "0001"


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
    assert columns(empty_db) == TABLES
    assert current_revision(empty_db) == "0001"


def test_the_schema_enforces_its_rules(empty_db: Settings):
    migrate(empty_db)
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
        for table in TABLES:
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
