"""place_orders(): many new orders reserved and recorded in one statement (group commit).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

infra/order_batch.py places the orders of many concurrent requests in one transaction
with one call of this function, then writes their outbox rows and commits once. Each
order is checked and applied on its own, in the order of the arrays (the caller sorts
them by account, so concurrent batches lock accounts in one order), and a refusal
touches nothing of the others. No exception block, so no subtransaction per order:

1. INSERT the order ON CONFLICT (account, client_order_id) DO NOTHING: a clash answers
   `duplicate_client_order_id` (checked first, as Ledger.place always did);
2. with an Idempotency-Key, INSERT its row (its answer body is written by the caller
   before the commit) ON CONFLICT DO NOTHING: a clash (a concurrent request with the
   same key came first) deletes the order again and answers `idempotency_conflict`;
   the caller replays the stored answer after its commit;
3. reserve with the same conditional UPDATE as before, last (the account or position
   row stays locked until the commit): when it finds no row, the order and its key
   row are deleted again and the answer is `insufficient_buying_power` /
   `insufficient_qty` with what is available.
The checks come in Ledger.place's old order (client_order_id, key, then money).
The result is one row per order: its index (1-based), the code (`ok` or the refusal)
and, for a refused reservation, the buying power or shares available.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ARGS = (
    "p_id uuid[], p_account uuid[], p_coid text[], p_symbol text[], p_side text[], "
    "p_type text[], p_tif text[], p_qty numeric[], p_notional numeric[], p_limit numeric[], "
    "p_stop numeric[], p_trail_price numeric[], p_trail_percent numeric[], "
    "p_extended boolean[], p_status text[], p_reserve_price numeric[], "
    "p_reserve_cash numeric[], p_reserve_qty numeric[], p_key text[], p_hash bytea[]"
)
SIGNATURE = (
    "place_orders(uuid[], uuid[], text[], text[], text[], text[], text[], numeric[], "
    "numeric[], numeric[], numeric[], numeric[], numeric[], boolean[], text[], numeric[], "
    "numeric[], numeric[], text[], bytea[])"
)

FUNCTION = f"""
CREATE OR REPLACE FUNCTION place_orders({ARGS})
RETURNS TABLE (n integer, code text, available numeric)
LANGUAGE plpgsql AS $$
DECLARE
  i integer;
  found_row boolean;
BEGIN
  FOR i IN 1 .. coalesce(array_length(p_id, 1), 0) LOOP
    n := i;
    available := NULL;
    INSERT INTO orders (id, account_id, client_order_id, symbol, side, type,
        time_in_force, qty, notional, limit_price, stop_price, trail_price,
        trail_percent, extended_hours, status, reserve_price, reserved_cash, reserved_qty)
      VALUES (p_id[i], p_account[i], p_coid[i], p_symbol[i], p_side[i], p_type[i],
        p_tif[i], p_qty[i], p_notional[i], p_limit[i], p_stop[i], p_trail_price[i],
        p_trail_percent[i], p_extended[i], p_status[i], p_reserve_price[i],
        p_reserve_cash[i], p_reserve_qty[i])
      ON CONFLICT ON CONSTRAINT orders_client_order_id_key DO NOTHING;
    IF NOT FOUND THEN
      code := 'duplicate_client_order_id';
      RETURN NEXT;
      CONTINUE;
    END IF;
    IF p_key[i] IS NOT NULL THEN
      INSERT INTO idempotency_keys (account_id, key, request_hash, status_code, body)
        VALUES (p_account[i], p_key[i], p_hash[i], 200, '')
        ON CONFLICT ON CONSTRAINT idempotency_keys_pkey DO NOTHING;
      IF NOT FOUND THEN
        DELETE FROM orders WHERE id = p_id[i];
        code := 'idempotency_conflict';
        RETURN NEXT;
        CONTINUE;
      END IF;
    END IF;
    IF p_side[i] = 'buy' THEN
      UPDATE accounts SET reserved_cash = reserved_cash + p_reserve_cash[i],
          updated_at = now()
        WHERE id = p_account[i] AND cash - reserved_cash >= p_reserve_cash[i];
      found_row := FOUND;
      IF NOT found_row THEN
        SELECT buying_power INTO available FROM accounts WHERE id = p_account[i];
        code := 'insufficient_buying_power';
      END IF;
    ELSE
      UPDATE positions SET reserved_qty = reserved_qty + p_reserve_qty[i],
          updated_at = now()
        WHERE account_id = p_account[i] AND symbol = p_symbol[i]
          AND qty - reserved_qty >= p_reserve_qty[i];
      found_row := FOUND;
      IF NOT found_row THEN
        SELECT qty - reserved_qty INTO available FROM positions
          WHERE account_id = p_account[i] AND symbol = p_symbol[i];
        code := 'insufficient_qty';
      END IF;
    END IF;
    IF NOT found_row THEN
      DELETE FROM orders WHERE id = p_id[i];
      IF p_key[i] IS NOT NULL THEN
        DELETE FROM idempotency_keys WHERE account_id = p_account[i] AND key = p_key[i];
      END IF;
      available := coalesce(available, 0);
      RETURN NEXT;
      CONTINUE;
    END IF;
    code := 'ok';
    RETURN NEXT;
  END LOOP;
END
$$;
"""


def upgrade() -> None:
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}")
