"""Price alerts and their firings (issue 6 item 1).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25

`alerts`: one row per alert of an account (infra/alerts.py): a symbol crossing above or
below a price, or moving by a percentage from the previous close (up, down or either),
one-shot or recurring with a cool-down. `version` rises with every change; each change
also writes an outbox row (topic alerts.definitions, keyed by symbol) in the same
transaction, which is how the alerts flow learns it. `reference_close` /
`reference_day` are the previous close the API saw at creation (percent alerts).

`alert_fires`: one row per firing, its id derived from the alert, its version and the
market event that crossed (so a re-processed event inserts nothing), with the account
event (`account_events.seq`) that carried it to the owner's stream.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.TIMESTAMP(timezone=True)
PRICE = sa.Numeric(20, 4)
NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "account_id",
            UUID(as_uuid=True),
            sa.ForeignKey("accounts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("price", PRICE),
        sa.Column("percent", sa.Numeric(12, 4)),
        sa.Column("direction", sa.Text),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("recurring", sa.Boolean, nullable=False),
        sa.Column("cooldown_s", sa.Integer),
        sa.Column("note", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("reference_close", PRICE),
        sa.Column("reference_day", sa.Date),
        sa.Column("fire_count", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("last_fired_at", TS),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
        sa.Column("triggered_at", TS),
        sa.Column("canceled_at", TS),
        sa.CheckConstraint(
            "type IN ('price_above', 'price_below', 'percent_change')", name="alerts_type"
        ),
        sa.CheckConstraint("status IN ('active', 'triggered', 'canceled')", name="alerts_status"),
        sa.CheckConstraint("source IN ('trade', 'mid')", name="alerts_source"),
        sa.CheckConstraint(
            "(type = 'percent_change') = (percent IS NOT NULL AND direction IS NOT NULL "
            "AND price IS NULL)",
            name="alerts_terms",
        ),
        sa.CheckConstraint("recurring = (cooldown_s IS NOT NULL)", name="alerts_cooldown"),
    )
    op.create_index("alerts_account_created", "alerts", ["account_id", "created_at"])
    op.create_table(
        "alert_fires",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "alert_id",
            UUID(as_uuid=True),
            sa.ForeignKey("alerts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("account_id", UUID(as_uuid=True), nullable=False),
        sa.Column("alert_version", sa.Integer, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("fired_at", TS, nullable=False),
        sa.Column("event_ns", sa.BigInteger, nullable=False),
        sa.Column("crossed", sa.Text, nullable=False),
        sa.Column("price", PRICE, nullable=False),
        sa.Column("level", sa.Numeric(30, 10), nullable=False),
        sa.Column("previous_close", PRICE),
        sa.Column("change_percent", sa.Numeric(12, 4)),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("venue", sa.Text),
        sa.Column("trade_id", sa.Text),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("recorded_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("crossed IN ('above', 'below')", name="alert_fires_crossed"),
    )
    op.create_index("alert_fires_alert_time", "alert_fires", ["alert_id", "fired_at"])


def downgrade() -> None:
    op.drop_index("alert_fires_alert_time", table_name="alert_fires")
    op.drop_table("alert_fires")
    op.drop_index("alerts_account_created", table_name="alerts")
    op.drop_table("alerts")
