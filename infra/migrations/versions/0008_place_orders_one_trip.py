"""place_orders() in one round trip: the outbox rows, the stored answers and the NOTIFY too.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04

0003's place_orders reserved and recorded a batch of orders; the caller then read the
rows back, built their outbox payloads and stored answers in Python and wrote them in a
second round trip, holding the account and position rows it had reserved against (which
the ledger flow also writes) across both trips and the Python in between, in a busy API
process. Now the caller builds everything from the values it sends, with the row's
timestamps set by itself (`p_at`), and this one statement, in its own transaction
(autocommit), also:

- writes the stored answer with the Idempotency-Key row (`p_body`), not '' and an
  UPDATE later;
- inserts the outbox row (`p_topic`, key = the symbol, `p_payload`) of each accepted
  order, in the arrays' order;
- NOTIFYs `p_channel` once if it accepted any.

The checks, their order and the result rows are 0003's. The caller sorts the orders
(buys, which lock account rows, before sells, which lock position rows, each in key
order): the order the ledger flow locks those rows in, so the two cannot deadlock.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

OLD_SIGNATURE = (
    "place_orders(uuid[], uuid[], text[], text[], text[], text[], text[], numeric[], "
    "numeric[], numeric[], numeric[], numeric[], numeric[], boolean[], text[], numeric[], "
    "numeric[], numeric[], text[], bytea[])"
)
ARGS = (
    "p_id uuid[], p_account uuid[], p_coid text[], p_symbol text[], p_side text[], "
    "p_type text[], p_tif text[], p_qty numeric[], p_notional numeric[], p_limit numeric[], "
    "p_stop numeric[], p_trail_price numeric[], p_trail_percent numeric[], "
    "p_extended boolean[], p_status text[], p_reserve_price numeric[], "
    "p_reserve_cash numeric[], p_reserve_qty numeric[], p_key text[], p_hash bytea[], "
    "p_body bytea[], p_payload bytea[], p_at timestamptz, p_topic text, p_channel text"
)
SIGNATURE = (
    "place_orders(uuid[], uuid[], text[], text[], text[], text[], text[], numeric[], "
    "numeric[], numeric[], numeric[], numeric[], numeric[], boolean[], text[], numeric[], "
    "numeric[], numeric[], text[], bytea[], bytea[], bytea[], timestamptz, text, text)"
)

FUNCTION = f"""
CREATE FUNCTION place_orders({ARGS})
RETURNS TABLE (n integer, code text, available numeric)
LANGUAGE plpgsql AS $$
DECLARE
  i integer;
  found_row boolean;
  accepted boolean := false;
BEGIN
  FOR i IN 1 .. coalesce(array_length(p_id, 1), 0) LOOP
    n := i;
    available := NULL;
    INSERT INTO orders (id, account_id, client_order_id, symbol, side, type,
        time_in_force, qty, notional, limit_price, stop_price, trail_price,
        trail_percent, extended_hours, status, reserve_price, reserved_cash, reserved_qty,
        created_at, updated_at)
      VALUES (p_id[i], p_account[i], p_coid[i], p_symbol[i], p_side[i], p_type[i],
        p_tif[i], p_qty[i], p_notional[i], p_limit[i], p_stop[i], p_trail_price[i],
        p_trail_percent[i], p_extended[i], p_status[i], p_reserve_price[i],
        p_reserve_cash[i], p_reserve_qty[i], p_at, p_at)
      ON CONFLICT ON CONSTRAINT orders_client_order_id_key DO NOTHING;
    IF NOT FOUND THEN
      code := 'duplicate_client_order_id';
      RETURN NEXT;
      CONTINUE;
    END IF;
    IF p_key[i] IS NOT NULL THEN
      INSERT INTO idempotency_keys (account_id, key, request_hash, status_code, body)
        VALUES (p_account[i], p_key[i], p_hash[i], 200, p_body[i])
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
    INSERT INTO outbox (topic, key, payload) VALUES (p_topic, p_symbol[i], p_payload[i]);
    accepted := true;
    code := 'ok';
    RETURN NEXT;
  END LOOP;
  IF accepted THEN
    PERFORM pg_notify(p_channel, '');
  END IF;
END
$$;
"""


def upgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {OLD_SIGNATURE}")
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}")
    path = Path(__file__).with_name("0003_place_orders.py")
    spec = importlib.util.spec_from_file_location("place_orders_0003", path)
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    op.execute(old.FUNCTION)
