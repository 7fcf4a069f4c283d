"""Watchlists: named, ordered lists of symbols, always seen through one account.

`Watchlists(pool, account_id)` is the only way in, and every statement it runs is
filtered by that account: another account's watchlist is indistinguishable from one
that does not exist. Ticker syntax and whether a symbol has market data are the
caller's checks; limits, name uniqueness and duplicates are enforced here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import psycopg
from psycopg import errors
from psycopg_pool import ConnectionPool

MAX_WATCHLISTS = 50  # per account
MAX_SYMBOLS = 200  # per watchlist

_SELECT = """
SELECT w.id, w.account_id, w.name, w.created_at, w.updated_at,
    coalesce(array_agg(s.symbol ORDER BY s.position) FILTER (WHERE s.symbol IS NOT NULL), '{}')
FROM watchlists w LEFT JOIN watchlist_symbols s ON s.watchlist_id = w.id
WHERE w.account_id = %(account)s AND (%(id)s::uuid IS NULL OR w.id = %(id)s::uuid)
GROUP BY w.id
ORDER BY w.created_at, w.id
"""
_INSERT_SYMBOL = (
    "INSERT INTO watchlist_symbols (watchlist_id, position, symbol) VALUES (%s, %s, %s)"
)


@dataclass(frozen=True, slots=True)
class Watchlist:
    id: UUID
    account_id: UUID
    name: str
    created_at: datetime
    updated_at: datetime
    symbols: tuple[str, ...]


class WatchlistError(Exception):
    """A rule of watchlists was broken; `code` is the API's error code."""

    code = "watchlist_error"


class NameTaken(WatchlistError):
    code = "watchlist_exists"


class TooManyWatchlists(WatchlistError):
    code = "too_many_watchlists"


class TooManySymbols(WatchlistError):
    code = "too_many_symbols"


class DuplicateSymbol(WatchlistError):
    code = "duplicate_symbol"


class SymbolNotListed(WatchlistError):
    code = "symbol_not_in_watchlist"


def check_symbols(symbols: Sequence[str]) -> None:
    """The rules of a whole symbol list: no repeats, at most MAX_SYMBOLS."""
    if len(symbols) > MAX_SYMBOLS:
        raise TooManySymbols(f"a watchlist holds at most {MAX_SYMBOLS} symbols")
    seen: set[str] = set()
    for s in symbols:
        if s in seen:
            raise DuplicateSymbol(f"{s} is listed twice")
        seen.add(s)


class Watchlists:
    """One account's watchlists. Methods taking an id return None when the account has no
    watchlist with that id."""

    def __init__(self, pool: ConnectionPool, account_id: UUID) -> None:
        self.pool = pool
        self.account_id = account_id

    def all(self) -> list[Watchlist]:
        with self.pool.connection() as conn:
            return self._read(conn, None)

    def get(self, watchlist_id: UUID) -> Watchlist | None:
        with self.pool.connection() as conn:
            return next(iter(self._read(conn, watchlist_id)), None)

    def create(self, name: str, symbols: Sequence[str]) -> Watchlist:
        check_symbols(symbols)
        with self.pool.connection() as conn, conn.transaction():
            # The account row lock serializes this account's creations, so the count holds;
            # NO KEY UPDATE does not block the foreign-key locks of orders being placed.
            conn.execute(
                "SELECT 1 FROM accounts WHERE id = %s FOR NO KEY UPDATE", (self.account_id,)
            )
            row = conn.execute(
                "SELECT count(*) FROM watchlists WHERE account_id = %s", (self.account_id,)
            ).fetchone()
            if row and row[0] >= MAX_WATCHLISTS:
                raise TooManyWatchlists(f"an account holds at most {MAX_WATCHLISTS} watchlists")
            created = self._insert(conn, name)
            self._replace_symbols(conn, created, symbols)
            return self._one(conn, created)

    def update(
        self,
        watchlist_id: UUID,
        *,
        name: str | None = None,
        symbols: Sequence[str] | None = None,
    ) -> Watchlist | None:
        """Rename and/or replace the symbols (in the given order)."""
        if symbols is not None:
            check_symbols(symbols)
        with self.pool.connection() as conn, conn.transaction():
            if not self._lock(conn, watchlist_id):
                return None
            if name is not None:
                self._rename(conn, watchlist_id, name)
            if symbols is not None:
                self._replace_symbols(conn, watchlist_id, symbols)
            self._touch(conn, watchlist_id)
            return self._one(conn, watchlist_id)

    def delete(self, watchlist_id: UUID) -> bool:
        with self.pool.connection() as conn:
            cur = conn.execute(
                "DELETE FROM watchlists WHERE id = %s AND account_id = %s",
                (watchlist_id, self.account_id),
            )
            return cur.rowcount == 1

    def add_symbol(self, watchlist_id: UUID, symbol: str) -> Watchlist | None:
        """Append `symbol` at the end of the list."""
        with self.pool.connection() as conn, conn.transaction():
            if not self._lock(conn, watchlist_id):
                return None
            count, present, last = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE symbol = %s), max(position) "
                "FROM watchlist_symbols WHERE watchlist_id = %s",
                (symbol, watchlist_id),
            ).fetchone() or (0, 0, None)
            if present:
                raise DuplicateSymbol(f"{symbol} is already in the watchlist")
            if count >= MAX_SYMBOLS:
                raise TooManySymbols(f"a watchlist holds at most {MAX_SYMBOLS} symbols")
            conn.execute(
                _INSERT_SYMBOL,
                (watchlist_id, 0 if last is None else last + 1, symbol),
            )
            self._touch(conn, watchlist_id)
            return self._one(conn, watchlist_id)

    def remove_symbol(self, watchlist_id: UUID, symbol: str) -> Watchlist | None:
        with self.pool.connection() as conn, conn.transaction():
            if not self._lock(conn, watchlist_id):
                return None
            cur = conn.execute(
                "DELETE FROM watchlist_symbols WHERE watchlist_id = %s AND symbol = %s",
                (watchlist_id, symbol),
            )
            if cur.rowcount == 0:
                raise SymbolNotListed(f"{symbol} is not in the watchlist")
            self._touch(conn, watchlist_id)
            return self._one(conn, watchlist_id)

    # --------------------------------------------------------------------- statements

    def _read(self, conn: psycopg.Connection, watchlist_id: UUID | None) -> list[Watchlist]:
        rows = conn.execute(_SELECT, {"account": self.account_id, "id": watchlist_id}).fetchall()
        return [Watchlist(*r[:5], tuple(r[5])) for r in rows]

    def _one(self, conn: psycopg.Connection, watchlist_id: UUID) -> Watchlist:
        [found] = self._read(conn, watchlist_id)
        return found

    def _lock(self, conn: psycopg.Connection, watchlist_id: UUID) -> bool:
        """Lock the account's watchlist for this transaction; False when there is none."""
        row = conn.execute(
            "SELECT 1 FROM watchlists WHERE id = %s AND account_id = %s FOR UPDATE",
            (watchlist_id, self.account_id),
        ).fetchone()
        return row is not None

    def _insert(self, conn: psycopg.Connection, name: str) -> UUID:
        try:
            with conn.transaction():
                row = conn.execute(
                    "INSERT INTO watchlists (account_id, name) VALUES (%s, %s) RETURNING id",
                    (self.account_id, name),
                ).fetchone()
        except errors.UniqueViolation:
            raise NameTaken(f"a watchlist named {name!r} exists") from None
        assert row is not None
        return row[0]

    def _rename(self, conn: psycopg.Connection, watchlist_id: UUID, name: str) -> None:
        try:
            with conn.transaction():
                conn.execute(
                    "UPDATE watchlists SET name = %s WHERE id = %s AND account_id = %s",
                    (name, watchlist_id, self.account_id),
                )
        except errors.UniqueViolation:
            raise NameTaken(f"a watchlist named {name!r} exists") from None

    @staticmethod
    def _replace_symbols(
        conn: psycopg.Connection, watchlist_id: UUID, symbols: Sequence[str]
    ) -> None:
        # Only called on a watchlist this account's transaction has just created or locked.
        conn.execute("DELETE FROM watchlist_symbols WHERE watchlist_id = %s", (watchlist_id,))
        with conn.cursor() as cur:
            cur.executemany(
                _INSERT_SYMBOL,
                [(watchlist_id, i, s) for i, s in enumerate(symbols)],
            )

    def _touch(self, conn: psycopg.Connection, watchlist_id: UUID) -> None:
        conn.execute(
            "UPDATE watchlists SET updated_at = now() WHERE id = %s AND account_id = %s",
            (watchlist_id, self.account_id),
        )
