"""What an account is worth: cash plus its long positions at the market.

A position is valued at qty x the NBBO midpoint, or at its cost (qty x average cost,
i.e. its cost basis) when the symbol has no two-sided quote. Positions are written by
the ledger flow (fills); this module only reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from uuid import UUID

from psycopg_pool import ConnectionPool

from schemas.orders import CASH_PLACES


@dataclass(frozen=True, slots=True)
class Holding:
    symbol: str
    qty: Decimal
    cost_basis: Decimal  # total cost of the shares held


def holdings(pool: ConnectionPool, account_id: UUID) -> list[Holding]:
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT symbol, qty, cost_basis FROM positions "
            "WHERE account_id = %s AND qty > 0 ORDER BY symbol",
            (account_id,),
        ).fetchall()
    return [Holding(*row) for row in rows]


def long_market_value(held: list[Holding], mids: Mapping[str, Decimal]) -> Decimal:
    total = Decimal(0)
    for h in held:
        mid = mids.get(h.symbol)
        total += h.qty * mid if mid is not None else h.cost_basis
    return total.quantize(CASH_PLACES, ROUND_HALF_EVEN)
