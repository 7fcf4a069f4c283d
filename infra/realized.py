"""Realized gains: the account's FIFO lot closures (lot_closures + tax_lots) in a range of
New York dates, as schemas.eod.ClosedLot rows. For GET /v1/account/realized and
`tapeflow report gains`, which reads PostgreSQL directly (no chDB needed)."""

from __future__ import annotations

from datetime import date, timedelta
from uuid import UUID

from psycopg_pool import ConnectionPool

from schemas.eod import ClosedLot, closed_lot, day_start

_CLOSED = """
SELECT c.symbol, c.qty, l.opened_at, c.closed_at, c.proceeds, c.cost_basis, c.lot_id,
    c.execution_id
FROM lot_closures c JOIN tax_lots l ON l.id = c.lot_id
WHERE c.account_id = %s AND c.closed_at >= %s AND c.closed_at < %s
ORDER BY c.closed_at, c.id
"""


def closed_lots(pool: ConnectionPool, account_id: UUID, start: date, end: date) -> list[ClosedLot]:
    """Lots closed (sold) from `start` to `end`, both New York dates included, oldest first."""
    with pool.connection() as conn:
        rows = conn.execute(
            _CLOSED, (account_id, day_start(start), day_start(end + timedelta(days=1)))
        ).fetchall()
    return [closed_lot(*row) for row in rows]
