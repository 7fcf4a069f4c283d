"""ClickHouse: the client (server or embedded chDB) and the schema."""

from __future__ import annotations

import threading
from typing import Any

import clickhouse_connect

from infra.settings import Settings

SCHEMA = [
    # Every trade once per (venue, trade_id); the ORDER BY key makes redelivery a no-op.
    """
    CREATE TABLE IF NOT EXISTS trades (
        symbol LowCardinality(String),
        minute DateTime('UTC'),
        venue LowCardinality(String),
        trade_id String,
        event_ns Int64,
        price Decimal(18, 4),
        size UInt64,
        conditions Array(LowCardinality(String)),
        updates_last UInt8,
        updates_volume UInt8
    ) ENGINE = ReplacingMergeTree
    ORDER BY (symbol, minute, venue, trade_id)
    """,
    """
    CREATE TABLE IF NOT EXISTS trade_breaks (
        symbol LowCardinality(String),
        venue LowCardinality(String),
        trade_id String,
        event_ns Int64
    ) ENGINE = ReplacingMergeTree
    ORDER BY (symbol, venue, trade_id)
    """,
    # A candle row is rewritten whole whenever its minute changes; the newest version wins
    # and is_deleted retires a minute whose trades were all broken.
    """
    CREATE TABLE IF NOT EXISTS candles_1m (
        symbol LowCardinality(String),
        start DateTime('UTC'),
        open Nullable(Decimal(18, 4)),
        high Nullable(Decimal(18, 4)),
        low Nullable(Decimal(18, 4)),
        close Nullable(Decimal(18, 4)),
        volume UInt64,
        notional Decimal(38, 4),
        vwap Nullable(Decimal(18, 4)),
        trades UInt32,
        version UInt64,
        is_deleted UInt8
    ) ENGINE = ReplacingMergeTree(version, is_deleted)
    ORDER BY (symbol, start)
    """,
    # End of day (infra/eod.py): each account's equity per closed New York day and its
    # positions that day. Keyed by (account, day[, symbol]): a re-run writes the same
    # rows again, which replace themselves (reads use FINAL).
    """
    CREATE TABLE IF NOT EXISTS portfolio_snapshots (
        account_id UUID,
        day Date,
        equity Decimal(38, 4),
        cash Decimal(38, 4),
        long_market_value Decimal(38, 4),
        cost_basis Decimal(38, 4),
        last_equity Decimal(38, 4),
        net_deposits Decimal(38, 4),
        realized_pl Decimal(38, 4),
        day_pl Decimal(38, 4),
        positions UInt32
    ) ENGINE = ReplacingMergeTree
    ORDER BY (account_id, day)
    """,
    """
    CREATE TABLE IF NOT EXISTS position_snapshots (
        account_id UUID,
        day Date,
        symbol LowCardinality(String),
        qty Decimal(38, 6),
        cost_basis Decimal(38, 4),
        price Nullable(Decimal(18, 4)),
        market_value Decimal(38, 4)
    ) ENGINE = ReplacingMergeTree
    ORDER BY (account_id, day, symbol)
    """,
]


class ClickHouse:
    """A thread-safe wrapper: chDB's embedded engine is shared by the API and the flows."""

    def __init__(self, settings: Settings) -> None:
        if settings.clickhouse_url:
            self._client = clickhouse_connect.get_client(dsn=settings.clickhouse_url)
        else:
            settings.chdb_path.mkdir(parents=True, exist_ok=True)
            self._client = clickhouse_connect.get_client(dsn=f"chdb://{settings.chdb_path}")
        self._lock = threading.Lock()

    def migrate(self) -> None:
        for ddl in SCHEMA:
            self.command(ddl)

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        with self._lock:
            return self._client.command(sql, parameters=parameters)

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        with self._lock:
            return self._client.query(sql, parameters=parameters).result_rows

    def insert(self, table: str, rows: list[list[Any]], columns: list[str]) -> None:
        if rows:
            with self._lock:
                self._client.insert(table, rows, column_names=columns)

    def close(self) -> None:
        with self._lock:
            self._client.close()


_shared: ClickHouse | None = None
_shared_target: str | None = None
_shared_lock = threading.Lock()


def _target(settings: Settings) -> str:
    return settings.clickhouse_url or str(settings.chdb_path)


def shared_clickhouse(settings: Settings) -> ClickHouse:
    """One client per process: chDB allows a single owner of its data directory."""
    global _shared, _shared_target
    with _shared_lock:
        if _shared is not None and _shared_target != _target(settings):
            raise RuntimeError(
                f"this process already uses ClickHouse at {_shared_target}; "
                f"release_shared_clickhouse() before opening {_target(settings)}"
            )
        if _shared is None:
            _shared = ClickHouse(settings)
            _shared.migrate()
            _shared_target = _target(settings)
        return _shared


def release_shared_clickhouse() -> None:
    """Close the process's client so another data directory can be opened (tests, CLI)."""
    global _shared, _shared_target
    with _shared_lock:
        if _shared is not None:
            _shared.close()
        _shared, _shared_target = None, None
