"""A private ledger for the end-of-day tests: EOD touches every account and every open
day order of its database, so these tests get a database of their own on the real
PostgreSQL server (migrated to the head), their own chDB and Redis database, and build the
ledger with real placements and fills (tests/ledger_support.py's way)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import ConnectionPool

from infra import accounts, api_keys, db
from infra.ledger import Ledger
from infra.settings import Settings
from infra.topics import Topics
from schemas.marketdata import Trade
from schemas.orders import OrderRequest, OrderType, Side, TimeInForce, place
from schemas.sale_conditions import eligibility
from tests.ledger_support import market

REDIS_DB = 11


def private_settings(services: Settings, home: Path) -> Settings:
    name = f"tapeflow_eod_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(services.postgres, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = services.postgres.rsplit("/", 1)[0] + "/" + name
    settings = Settings(
        home=home, postgres_url=url, redis_port=services.redis_port, redis_db=REDIS_DB
    )
    db.migrate(settings)  # the head: the ledger's code needs it (0008's place_orders)
    return settings


def drop_private(services: Settings, settings: Settings) -> None:
    pool = db._pools.pop(settings.postgres, None)
    if pool is not None:
        pool.close()
    name = settings.postgres.rsplit("/", 1)[1]
    with psycopg.connect(services.postgres, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def ns(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1_000


def trade(symbol: str, price: str, at: datetime, n: int = 0) -> Trade:
    last, volume = eligibility(("@",))
    t = ns(at) + n
    return Trade(symbol, "iex", f"{symbol}{t}", Decimal(price), 100, ("@",), t, t, last, volume)


class Book:
    """Places, acknowledges and fills orders through the ledger of the private database."""

    def __init__(self, settings: Settings) -> None:
        self.pool: ConnectionPool = db.pool(settings.postgres)
        self.ledger = Ledger(self.pool, Topics(f"t{uuid.uuid4().hex[:8]}."))

    def user(self, cash: str = "0", *, operator: bool = False) -> tuple[UUID, str]:
        user, account = accounts.create_user(
            self.pool, f"e{uuid.uuid4().hex[:12]}@test.local", "EOD Test", is_operator=operator
        )
        _, token = api_keys.create_key(self.pool, user.id, "tests", rate_limit_per_minute=10_000)
        if Decimal(cash) > 0:
            self.ledger.deposit(account.id, Decimal(cash))
        return account.id, str(token)

    def order(
        self,
        account: UUID,
        symbol: str,
        side: str,
        qty: str,
        limit: str,
        tif: str = "day",
        placed_at: datetime | None = None,
    ) -> UUID:
        """A limit order placed (in the regular session, or at `placed_at`), and
        acknowledged by its desk unless held for the next session (`accepted`)."""
        req = OrderRequest(
            symbol,
            Side(side),
            OrderType.LIMIT,
            TimeInForce(tif),
            qty=Decimal(qty),
            limit_price=Decimal(limit),
        )
        view = market(now=placed_at) if placed_at else market()
        order = self.ledger.place(account, req, place(req, view))
        if order.status == "accepted":
            return order.id
        got = self.answer("acknowledged", order.id, account, datetime.now(UTC))
        assert got.outcome == "applied", got
        return order.id

    def answer(self, kind: str, order_id: UUID, account: UUID, at: datetime, **extra: Any):
        event = {
            "event_id": f"{kind}:{uuid.uuid4()}",
            "kind": kind,
            "at": ns(at),
            "order_id": str(order_id),
            "account_id": str(account),
            **extra,
        }
        return self.ledger.apply(event)

    def fill(self, order_id: UUID, account: UUID, qty: str, price: str, at: datetime) -> None:
        exec_id = f"fill:{uuid.uuid4()}"
        got = self.ledger.apply(
            {
                "event_id": exec_id,
                "exec_id": exec_id,
                "kind": "fill",
                "at": ns(at),
                "order_id": str(order_id),
                "account_id": str(account),
                "qty": qty,
                "price": price,
                "venue": "iex",
                "route": ["iex"],
            }
        )
        assert got.outcome == "applied", got

    def trade_at(
        self, account: UUID, symbol: str, side: str, qty: str, price: str, at: datetime
    ) -> UUID:
        """A day limit order at `price`, filled whole at `at`."""
        order_id = self.order(account, symbol, side, qty, price)
        self.fill(order_id, account, qty, price, at)
        return order_id
