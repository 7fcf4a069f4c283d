"""PostgreSQL: the process's connection pool and the schema migrations (Alembic).

Runtime code talks to PostgreSQL with plain SQL through psycopg 3 and one
psycopg_pool.ConnectionPool per database per process, opened on first use so
that commands which never touch the ledger (e.g. `tapeflow candles`) never
connect. SQLAlchemy is only Alembic's engine for `migrate`.
"""

from __future__ import annotations

import atexit
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg_pool import ConnectionPool

from infra.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
POOL_MAX = 10  # the API's sync routes run on AnyIO's 40 threads; most hold a connection ~1 ms
POOL_TIMEOUT_S = 10.0

_pools: dict[str, ConnectionPool] = {}
_pools_lock = threading.Lock()
_keep_open_lock = threading.Lock()


def pool(dsn: str) -> ConnectionPool:
    """The process's pool for `dsn` (settings.postgres), opened on first use."""
    with _pools_lock:
        found = _pools.get(dsn)
        if found is None:
            # autocommit: a lone statement commits by itself; multi-statement work
            # opens `conn.transaction()` explicitly, so no transaction is left idle.
            found = ConnectionPool(
                dsn,
                min_size=1,
                max_size=POOL_MAX,
                timeout=POOL_TIMEOUT_S,
                kwargs={"autocommit": True},
                name="tapeflow",
                open=False,
            )
            found.open(wait=True, timeout=POOL_TIMEOUT_S)
            _pools[dsn] = found
        return found


def keep_open(pool: ConnectionPool, n: int, timeout_s: float = POOL_TIMEOUT_S) -> None:
    """Hold at least `n` connections open from now on, and wait until they are.

    A pool grows one connection at a time, on demand, and shrinks back after it has been
    idle a while: a caller that needs `n` at once (the ledger's lanes) would otherwise pay
    for the connections with the first batch after a start or a quiet spell (the first
    ledger batch after a start took ~0.5 s instead of ~50 ms). Safe to call from several
    threads at once (`tapeflow run --workers 2` builds two ledger sinks together)."""
    with _keep_open_lock:  # a pool's wait() allows one waiter at a time
        if pool.min_size < n:
            pool.resize(min_size=n, max_size=max(n, pool.max_size or n))
        pool.wait(timeout=timeout_s)


def fetchone(pool: ConnectionPool, sql: str, params: tuple = ()) -> tuple | None:
    """One row of a single autocommitted statement."""
    with pool.connection() as conn:
        return conn.execute(sql, params).fetchone()


@atexit.register
def close_pools() -> None:
    """Close every pool (its worker threads would otherwise warn at interpreter exit)."""
    with _pools_lock:
        for p in _pools.values():
            p.close()
        _pools.clear()


def sqlalchemy_url(dsn: str) -> str:
    """settings.postgres (a libpq URL) as the URL SQLAlchemy needs to use psycopg 3."""
    # Alembic and SQLAlchemy are imported only when migrating: every CLI command and API
    # process imports this module, and they add ~0.3 s to start-up.
    from sqlalchemy.engine import make_url

    url = make_url(dsn.replace("postgres://", "postgresql://", 1))
    return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def alembic_config(settings: Settings) -> Config:
    """Alembic's configuration built in code: no alembic.ini, the URL comes from Settings."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = sqlalchemy_url(settings.postgres)
    return cfg


def migrate(settings: Settings, revision: str = "head") -> None:
    """Upgrade the schema to `revision` (idempotent; concurrent callers serialize)."""
    from alembic import command

    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(settings), revision)


def current_revision(settings: Settings) -> str | None:
    """The revision the database is at, None before the first migration."""
    with psycopg.connect(settings.postgres) as conn:
        exists = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return None
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return row[0] if row else None
