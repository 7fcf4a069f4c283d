"""Reconciliation reports against the venues (issue 6 item 4).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25

`tapeflow reconcile --date D` (infra/reconcile.py) compares the simulated venues' own
execution reports (Kafka venues.executions) for New York day D with the ledger's
`executions` of D, and stores the outcome here:

- reconciliation_reports: one row per run (a rerun for the same day adds a row; the
  newest is the day's answer, the older ones stay as history), with the counts of each
  kind of finding and `status` clean | discrepancies; `accounts` is the scope it was
  run for (NULL: every account).
- reconciliation_items: the findings of a report, numbered 1, 2, ... (missing_in_ledger,
  extra_in_ledger, mismatch, conflicting_reports, ledger_anomaly) with the venue's and the
  ledger's version of the execution as JSON and the names of the fields that differ.

Also an index on executions(executed_at): a day's executions of every account are read
by time, which the (account_id, executed_at) index of 0002 cannot serve.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TS = sa.TIMESTAMP(timezone=True)
COUNTS = (
    "venue_reports",
    "ledger_executions",
    "matched",
    "missing_in_ledger",
    "extra_in_ledger",
    "mismatched",
    "conflicting_reports",
    "ledger_anomalies",
)
KINDS = (
    "missing_in_ledger",
    "extra_in_ledger",
    "mismatch",
    "conflicting_reports",
    "ledger_anomaly",
)


def upgrade() -> None:
    op.create_table(
        "reconciliation_reports",
        sa.Column(
            "id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")
        ),
        sa.Column("trading_day", sa.Date, nullable=False),
        sa.Column("accounts", ARRAY(UUID(as_uuid=True)), nullable=True),
        sa.Column("status", sa.Text, nullable=False),
        *(sa.Column(name, sa.Integer, nullable=False) for name in COUNTS),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.text("now()")),
        sa.CheckConstraint(
            "status IN ('clean', 'discrepancies')", name="reconciliation_reports_status"
        ),
    )
    op.create_index(
        "reconciliation_reports_day", "reconciliation_reports", ["trading_day", "created_at"]
    )
    op.create_index("reconciliation_reports_created", "reconciliation_reports", ["created_at"])
    op.create_table(
        "reconciliation_items",
        sa.Column(
            "report_id",
            UUID(as_uuid=True),
            sa.ForeignKey("reconciliation_reports.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("execution_id", sa.Text, nullable=True),
        sa.Column("order_id", sa.Text, nullable=True),
        sa.Column("account_id", sa.Text, nullable=True),
        sa.Column("symbol", sa.Text, nullable=True),
        sa.Column("fields", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("venue", JSONB, nullable=True),
        sa.Column("ledger", JSONB, nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("report_id", "seq", name="reconciliation_items_pkey"),
        sa.CheckConstraint(
            "kind IN (" + ", ".join(f"'{k}'" for k in KINDS) + ")",
            name="reconciliation_items_kind",
        ),
    )
    op.create_index("executions_executed_at", "executions", ["executed_at"])


def downgrade() -> None:
    op.drop_index("executions_executed_at", table_name="executions")
    op.drop_table("reconciliation_items")
    op.drop_index("reconciliation_reports_created", table_name="reconciliation_reports")
    op.drop_index("reconciliation_reports_day", table_name="reconciliation_reports")
    op.drop_table("reconciliation_reports")
