"""End-of-day runs and the day's books (issue 6 item 3).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25

- eod_runs: one row per New York trading day that was closed (infra/eod.py). Its
  cut-offs fix what the run counted, so a run that crashed half way resumes with the
  same ones: market_cutoff (the feed's time: executions, lots) and ledger_cutoff
  (PostgreSQL's own time: cash transfers, when orders were placed). `status` is
  'running' until the books are written, then 'done'; a done day is never run again.
- eod_accounts: each account's closed day: equity, cash, long market value and cost
  basis at the close, the day's net deposits, realized P&L and day P&L.
- accounts.last_equity (as Alpaca's account has it): the equity at the newest closed
  day, last_equity_day. Positions per day go to ClickHouse (position_snapshots).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TS = sa.TIMESTAMP(timezone=True)
CASH = sa.Numeric(20, 4)
ZERO = sa.text("0")


def upgrade() -> None:
    op.create_table(
        "eod_runs",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("market_cutoff", TS, nullable=False),
        sa.Column("ledger_cutoff", TS, nullable=False),
        sa.Column("started_at", TS, nullable=False, server_default=sa.text("now()")),
        sa.Column("finished_at", TS),
        sa.Column("expired_orders", sa.Integer, nullable=False, server_default=ZERO),
        sa.Column("accounts", sa.Integer, nullable=False, server_default=ZERO),
        # The closing price each held symbol was valued at (symbol -> decimal string).
        sa.Column("prices", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.CheckConstraint("status IN ('running', 'done')", name="eod_runs_status"),
    )
    op.create_table(
        "eod_accounts",
        sa.Column(
            "day", sa.Date, sa.ForeignKey("eod_runs.day", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "account_id",
            UUID(as_uuid=True),
            sa.ForeignKey("accounts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("equity", CASH, nullable=False),
        sa.Column("cash", CASH, nullable=False),
        sa.Column("long_market_value", CASH, nullable=False),
        sa.Column("cost_basis", CASH, nullable=False),
        sa.Column("last_equity", CASH, nullable=False),
        sa.Column("net_deposits", CASH, nullable=False),
        sa.Column("realized_pl", CASH, nullable=False),
        sa.Column("day_pl", CASH, nullable=False),
        sa.Column("positions", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("day", "account_id", name="eod_accounts_pkey"),
    )
    op.create_index("eod_accounts_account_day", "eod_accounts", ["account_id", "day"])
    op.add_column("accounts", sa.Column("last_equity", CASH, nullable=False, server_default=ZERO))
    op.add_column("accounts", sa.Column("last_equity_day", sa.Date))


def downgrade() -> None:
    op.drop_column("accounts", "last_equity_day")
    op.drop_column("accounts", "last_equity")
    op.drop_index("eod_accounts_account_day", table_name="eod_accounts")
    op.drop_table("eod_accounts")
    op.drop_table("eod_runs")
