"""Account events: the log behind the trade_updates stream (issue 5 item 3).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

Every change of an order's status that Ledger.apply makes (and every fill) appends one
row here, in the same transaction, numbered by the account's own counter
`accounts.event_seq` (1, 2, 3 ... per account, no holes: the counter is bumped under
the account's row lock in the transaction that writes the row). WS /v1/stream replays
these rows to a client that reconnects with the last seq it saw; Redis pub/sub only
carries them live. The payload is the event as streamed (infra/account_events.py).

Also the partial index the outbox relay wants: unsent rows of one topic in id order.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("event_seq", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    )
    op.create_table(
        "account_events",
        sa.Column(
            "account_id",
            UUID(as_uuid=True),
            sa.ForeignKey("accounts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("order_id", UUID(as_uuid=True), nullable=True),
        sa.Column("at", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "seq", name="account_events_pkey"),
        sa.CheckConstraint("seq > 0", name="account_events_seq"),
    )
    op.create_index(
        "outbox_unsent_topic",
        "outbox",
        ["topic", "id"],
        postgresql_where=sa.text("sent_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("outbox_unsent_topic", table_name="outbox")
    op.drop_table("account_events")
    op.drop_column("accounts", "event_seq")
