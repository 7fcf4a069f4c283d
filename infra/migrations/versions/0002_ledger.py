"""The ledger: cash and reservations, orders, executions, positions, tax lots, the outbox.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Money is NUMERIC: prices and cash to 4 places, quantities to 6. The CHECK constraints
are the last line of defence for the invariants of DESIGN.md section 3: cash and
shares never negative, never more reserved than held, never filled beyond qty.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, UUID

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NOW = sa.text("now()")
NEW_UUID = sa.text("gen_random_uuid()")
TS = sa.TIMESTAMP(timezone=True)
CASH = sa.Numeric(20, 4)
PRICE = sa.Numeric(20, 4)
QTY = sa.Numeric(20, 6)
ZERO = sa.text("0")

STATUSES = (
    "accepted",
    "pending_new",
    "new",
    "partially_filled",
    "filled",
    "pending_cancel",
    "pending_replace",
    "canceled",
    "expired",
    "replaced",
    "rejected",
)
OPEN_STATUSES = (
    "('accepted','pending_new','new','partially_filled','pending_cancel','pending_replace')"
)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _account_fk(**kw: object) -> sa.Column:
    return sa.Column(
        "account_id",
        UUID(as_uuid=True),
        sa.ForeignKey("accounts.id", ondelete="RESTRICT"),
        nullable=False,
        **kw,
    )


def upgrade() -> None:
    op.add_column("accounts", sa.Column("cash", CASH, nullable=False, server_default=ZERO))
    op.add_column("accounts", sa.Column("reserved_cash", CASH, nullable=False, server_default=ZERO))
    op.add_column(
        "accounts",
        sa.Column("buying_power", CASH, sa.Computed("cash - reserved_cash", persisted=True)),
    )
    op.add_column("accounts", sa.Column("updated_at", TS, nullable=False, server_default=NOW))
    op.create_check_constraint("accounts_cash", "accounts", "cash >= 0")
    op.create_check_constraint(
        "accounts_reserved_cash", "accounts", "reserved_cash >= 0 AND reserved_cash <= cash"
    )

    op.create_table(
        "cash_transfers",
        sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=NEW_UUID),
        _account_fk(index=True),
        sa.Column("amount", CASH, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("kind IN ('deposit', 'withdrawal')", name="cash_transfers_kind"),
        sa.CheckConstraint(
            "(kind = 'deposit' AND amount > 0) OR (kind = 'withdrawal' AND amount < 0)",
            name="cash_transfers_amount",
        ),
    )

    op.create_table(
        "orders",
        sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=NEW_UUID),
        _account_fk(),
        sa.Column("client_order_id", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("side", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("time_in_force", sa.Text, nullable=False),
        sa.Column("qty", QTY),
        sa.Column("notional", CASH),
        sa.Column("filled_qty", QTY, nullable=False, server_default=ZERO),
        # Sum of qty × price over the fills, so the average never drifts by rounding.
        sa.Column("filled_value", sa.Numeric(30, 10), nullable=False, server_default=ZERO),
        sa.Column("filled_avg_price", PRICE),
        sa.Column("limit_price", PRICE),
        sa.Column("stop_price", PRICE),
        sa.Column("trail_price", PRICE),
        sa.Column("trail_percent", sa.Numeric(8, 4)),
        sa.Column("hwm", PRICE),
        sa.Column("extended_hours", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("reject_reason", sa.Text),
        # The worst price the reservation covers: a buy never fills above it.
        sa.Column("reserve_price", PRICE),
        sa.Column("reserved_cash", CASH, nullable=False, server_default=ZERO),
        sa.Column("reserved_qty", QTY, nullable=False, server_default=ZERO),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
        sa.Column("submitted_at", TS),
        sa.Column("filled_at", TS),
        sa.Column("canceled_at", TS),
        sa.Column("expired_at", TS),
        sa.Column("replaced_at", TS),
        sa.Column("failed_at", TS),
        sa.Column("replaced_by", UUID(as_uuid=True), sa.ForeignKey("orders.id")),
        sa.Column("replaces", UUID(as_uuid=True), sa.ForeignKey("orders.id")),
        sa.Column("version", sa.Integer, nullable=False, server_default=sa.text("1")),
        sa.UniqueConstraint("account_id", "client_order_id", name="orders_client_order_id_key"),
        sa.CheckConstraint("side IN ('buy', 'sell')", name="orders_side"),
        sa.CheckConstraint(
            "type IN ('market', 'limit', 'stop', 'stop_limit', 'trailing_stop')",
            name="orders_type",
        ),
        sa.CheckConstraint(
            "time_in_force IN ('day', 'gtc', 'opg', 'cls', 'ioc', 'fok')", name="orders_tif"
        ),
        sa.CheckConstraint(_in("status", STATUSES), name="orders_status"),
        sa.CheckConstraint("(qty IS NULL) <> (notional IS NULL)", name="orders_qty_or_notional"),
        sa.CheckConstraint("qty IS NULL OR qty > 0", name="orders_qty"),
        sa.CheckConstraint("notional IS NULL OR notional > 0", name="orders_notional"),
        sa.CheckConstraint(
            "filled_qty >= 0 AND (qty IS NULL OR filled_qty <= qty)", name="orders_filled_qty"
        ),
        sa.CheckConstraint(
            "reserved_cash >= 0 AND reserved_qty >= 0", name="orders_reservation_positive"
        ),
        sa.CheckConstraint(
            f"status IN {OPEN_STATUSES} OR (reserved_cash = 0 AND reserved_qty = 0)",
            name="orders_closed_reserve_nothing",
        ),
        sa.CheckConstraint("char_length(client_order_id) BETWEEN 1 AND 128", name="orders_coid"),
    )
    # Listing: newest first within an account, the id breaking ties for the cursor.
    op.create_index("orders_account_created", "orders", ["account_id", "created_at", "id"])
    op.create_index(
        "orders_open",
        "orders",
        ["account_id", "symbol"],
        postgresql_where=sa.text(f"status IN {OPEN_STATUSES}"),
    )

    op.create_table(
        "executions",
        # Deterministic id from the execution side: applying it twice is a unique violation.
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("order_id", UUID(as_uuid=True), sa.ForeignKey("orders.id"), nullable=False),
        _account_fk(),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("side", sa.Text, nullable=False),
        sa.Column("qty", QTY, nullable=False),
        sa.Column("price", PRICE, nullable=False),
        sa.Column("venue", sa.Text, nullable=False),
        sa.Column("route", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("executed_at", TS, nullable=False),
        sa.Column("recorded_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("qty > 0 AND price > 0", name="executions_positive"),
    )
    op.create_index("executions_order", "executions", ["order_id"])
    op.create_index("executions_account_time", "executions", ["account_id", "executed_at"])

    op.create_table(
        "positions",
        _account_fk(),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("qty", QTY, nullable=False, server_default=ZERO),
        sa.Column("reserved_qty", QTY, nullable=False, server_default=ZERO),
        sa.Column("cost_basis", sa.Numeric(30, 10), nullable=False, server_default=ZERO),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("account_id", "symbol", name="positions_pkey"),
        sa.CheckConstraint("qty >= 0", name="positions_qty"),
        sa.CheckConstraint("reserved_qty >= 0 AND reserved_qty <= qty", name="positions_reserved"),
    )

    op.create_table(
        "tax_lots",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        _account_fk(),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("execution_id", sa.Text, sa.ForeignKey("executions.id"), nullable=False),
        sa.Column("opened_at", TS, nullable=False),
        sa.Column("qty", QTY, nullable=False),
        sa.Column("remaining_qty", QTY, nullable=False),
        sa.Column("price", PRICE, nullable=False),
        sa.CheckConstraint("remaining_qty >= 0 AND remaining_qty <= qty", name="tax_lots_qty"),
    )
    op.create_index("tax_lots_open", "tax_lots", ["account_id", "symbol", "opened_at", "id"])
    op.create_table(
        "lot_closures",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("lot_id", sa.BigInteger, sa.ForeignKey("tax_lots.id"), nullable=False),
        _account_fk(),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("execution_id", sa.Text, sa.ForeignKey("executions.id"), nullable=False),
        sa.Column("closed_at", TS, nullable=False),
        sa.Column("qty", QTY, nullable=False),
        sa.Column("proceeds", sa.Numeric(30, 10), nullable=False),
        sa.Column("cost_basis", sa.Numeric(30, 10), nullable=False),
        sa.Column("realized_pnl", sa.Numeric(30, 10), nullable=False),
    )
    op.create_index("lot_closures_account_time", "lot_closures", ["account_id", "closed_at"])

    op.create_table(
        # The transactional outbox: rows written in the same transaction as the order
        # change, relayed to Kafka in id order by infra/outbox.py.
        "outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("payload", BYTEA, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("sent_at", TS),
    )
    op.create_index("outbox_unsent", "outbox", ["id"], postgresql_where=sa.text("sent_at IS NULL"))
    op.create_table(
        # Where the relay's last confirmed batch ended in each partition: on restart it
        # reads oms.orders from here to learn which unsent rows already reached Kafka.
        "outbox_progress",
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("topic", "partition", name="outbox_progress_pkey"),
    )

    op.create_table(
        "idempotency_keys",
        _account_fk(),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("request_hash", BYTEA, nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("body", BYTEA, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("account_id", "key", name="idempotency_keys_pkey"),
        sa.CheckConstraint("char_length(key) BETWEEN 1 AND 255", name="idempotency_keys_key"),
    )

    op.create_table(
        # Order events from the execution side that the ledger applied (by event id),
        # so a redelivered acknowledgement or cancel confirmation changes nothing.
        "applied_events",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("order_id", UUID(as_uuid=True), sa.ForeignKey("orders.id"), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("applied_at", TS, nullable=False, server_default=NOW),
    )
    op.create_table(
        # Execution-side events the ledger could not apply (overfill, oversell, illegal
        # transition): kept for reconciliation instead of corrupting the ledger.
        "ledger_anomalies",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("event_id", sa.Text, nullable=False, unique=True),
        sa.Column("order_id", UUID(as_uuid=True)),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("recorded_at", TS, nullable=False, server_default=NOW),
    )


def downgrade() -> None:
    for table in (
        "ledger_anomalies",
        "applied_events",
        "idempotency_keys",
        "outbox_progress",
        "outbox",
        "lot_closures",
        "tax_lots",
        "positions",
        "executions",
        "orders",
        "cash_transfers",
    ):
        op.drop_table(table)
    op.drop_constraint("accounts_reserved_cash", "accounts")
    op.drop_constraint("accounts_cash", "accounts")
    for column in ("updated_at", "buying_power", "reserved_cash", "cash"):
        op.drop_column("accounts", column)
