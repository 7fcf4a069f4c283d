"""The connection pool's floor (infra.db.keep_open) on the real PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from psycopg_pool import ConnectionPool

from infra import db
from infra.settings import Settings


def test_keep_open_holds_connections_ready_for_concurrent_users(services: Settings) -> None:
    pool = ConnectionPool(services.postgres, min_size=1, max_size=8, open=False)
    pool.open(wait=True)
    try:
        assert pool.get_stats()["pool_size"] == 1
        db.keep_open(pool, 4)
        # open before anyone asked for them: 4 users at once wait for none
        assert pool.get_stats()["pool_size"] == 4

        def backend(_: int) -> int:
            with pool.connection() as conn:
                conn.execute("SELECT pg_sleep(0.2)")
                return conn.info.backend_pid

        with ThreadPoolExecutor(4) as ex:
            pids = set(ex.map(backend, range(4)))
        assert len(pids) == 4
        stats = pool.get_stats()
        assert stats.get("requests_waiting", 0) == 0
        assert stats.get("connections_num", 0) == 4  # none had to be opened on demand
        # a max below the floor grows to it
        db.keep_open(pool, 10)
        assert pool.min_size == 10 and pool.max_size == 10
    finally:
        pool.close()


def test_keep_open_from_several_threads_at_once(services: Settings) -> None:
    """Two ledger workers in one process build their sinks together on one pool."""
    pool = ConnectionPool(services.postgres, min_size=1, max_size=8, open=False)
    pool.open(wait=True)
    try:
        with ThreadPoolExecutor(4) as ex:
            list(ex.map(lambda _: db.keep_open(pool, 4), range(4)))
        assert pool.get_stats()["pool_size"] == 4
    finally:
        pool.close()
