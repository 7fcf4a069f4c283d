"""Users, their accounts, API keys and watchlists.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA, UUID

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

NOW = sa.text("now()")
NEW_UUID = sa.text("gen_random_uuid()")  # core PostgreSQL since 13


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=NOW)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=NEW_UUID),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("is_operator", sa.Boolean, nullable=False, server_default=sa.false()),
        _created_at(),
        sa.UniqueConstraint("email", name="users_email_key"),
        # Stored lower-case, so the unique constraint is case-insensitive in effect.
        sa.CheckConstraint("email = lower(email) AND position('@' in email) > 1", "users_email"),
    )
    op.create_table(
        "accounts",
        sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=NEW_UUID),
        # One account per user for now; a later migration may drop the unique constraint.
        sa.Column(
            "user_id",
            UUID(as_uuid=True),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        ),
        sa.Column("account_number", sa.Text, nullable=False, unique=True),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.Column("currency", sa.CHAR(3), nullable=False, server_default="USD"),
        _created_at(),
        sa.CheckConstraint("status IN ('active', 'restricted', 'closed')", name="accounts_status"),
    )
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.Text, primary_key=True),
        sa.Column(
            "user_id",
            UUID(as_uuid=True),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("name", sa.Text, nullable=False),
        # HMAC-SHA256 of the secret keyed by key_id (see infra/tokens.py for why not argon2).
        sa.Column("secret_hash", BYTEA, nullable=False),
        _created_at(),
        sa.Column("last_used_at", sa.TIMESTAMP(timezone=True)),
        sa.Column("revoked_at", sa.TIMESTAMP(timezone=True)),
        sa.Column("rate_limit_per_minute", sa.Integer, nullable=False, server_default="200"),
        sa.CheckConstraint("key_id ~ '^TF[A-Z2-7]{16}$'", name="api_keys_key_id"),
        sa.CheckConstraint("octet_length(secret_hash) = 32", name="api_keys_secret_hash"),
        sa.CheckConstraint("rate_limit_per_minute > 0", name="api_keys_rate_limit"),
    )
    op.create_table(
        "watchlists",
        sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=NEW_UUID),
        sa.Column(
            "account_id",
            UUID(as_uuid=True),
            sa.ForeignKey("accounts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.Text, nullable=False),
        _created_at(),
        sa.Column("updated_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=NOW),
        # Also the index every account-scoped read of watchlists uses.
        sa.UniqueConstraint("account_id", "name", name="watchlists_account_name_key"),
        sa.CheckConstraint("char_length(name) BETWEEN 1 AND 64", name="watchlists_name"),
    )
    op.create_table(
        "watchlist_symbols",
        sa.Column(
            "watchlist_id",
            UUID(as_uuid=True),
            sa.ForeignKey("watchlists.id", ondelete="CASCADE"),
            nullable=False,
        ),
        # Order of the list; gaps are allowed (removal does not renumber).
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("watchlist_id", "position", name="watchlist_symbols_pkey"),
        sa.UniqueConstraint("watchlist_id", "symbol", name="watchlist_symbols_symbol_key"),
    )


def downgrade() -> None:
    for table in ("watchlist_symbols", "watchlists", "api_keys", "accounts", "users"):
        op.drop_table(table)
